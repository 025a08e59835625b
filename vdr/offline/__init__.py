"""What the quickstart and the tests use instead of the Hub: a tiny, randomly initialised Qwen3-VL with the real
architecture, processor and chat template (``tiny_model``), and document pages rendered locally
(``generated_pages``)."""
