"""Data: training rows from any source (``sources``), retrieval evaluation sets in the rows and BEIR layouts
(``retrieval_sets``), and page images kept encoded until used and resized once to a model's pixel budget
(``page_images``)."""
