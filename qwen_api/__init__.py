"""qwen_server's OpenAI extras: tools, response_format and logprobs (tool_calls.py), /v1/completions (completions.py)."""
