"""The models every script loads: the embedding model (``SentenceTransformer``), the multi-vector (late-interaction)
``MultiVectorEncoder`` and the ``CrossEncoder`` reranker, all loaded with the same options (``loading``)."""
