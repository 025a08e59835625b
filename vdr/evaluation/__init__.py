"""Evaluation (evaluate_vdr.py): which models to compare (``model_list``), their pages encoded once and cached
(``encoding``), each kind of model scored (``single_vector`` with ``quantization``, ``maxsim``, ``bm25``,
``retrieve_then_rerank``) with one set of metrics (``metrics``), and the results written (``report``,
``storage_report``)."""
