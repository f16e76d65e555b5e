"""Generation engines: an in-process vLLM ``LLM``, OpenRLHF's vLLM engines under Ray, an OpenAI-compatible endpoint."""
