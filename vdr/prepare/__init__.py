"""Preparing your own documents (prepare_vdr_data.py): pages rendered from PDFs and scans (``documents``), queries
(``queries``), a split by document (``split``), mined hard negatives (``negatives``), the report and ``--validate``
(``checks``); the output folder's files are named in ``output_files``."""
