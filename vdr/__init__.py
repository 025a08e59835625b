"""vdr-finetune's library: what the scripts at the repository root are made of.

- ``models``: loading every kind of model (embedding, multi-vector, reranker) with the same options;
- ``data``: training rows from any source, retrieval evaluation sets, page images and their presizing;
- ``training``: the training scripts' arguments, losses, evaluators, LoRA, several processes, the run's surroundings;
- ``evaluation``: evaluate_vdr.py: which models, encoding once and caching, each kind scored, metrics, reports;
- ``prepare``: prepare_vdr_data.py: pages, queries, the split, hard negatives, the report and validation;
- ``offline``: the tiny offline Qwen3-VL and generated pages the quickstarts and tests use;
- shared: ``cli`` (config + command line, one-paragraph errors), ``errors``, ``cache`` ($VDR_CACHE, the tensor
  cache), ``hub``, ``provenance`` (run_config.json), ``run_folder`` (a training run's output folder).
"""
