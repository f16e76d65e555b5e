"""Stand-ins for unit tests of the logic above the engines (search, judges, datasets), importable by users' own
plugin tests too. Never a substitute for the real tokenizer or engine where tokenisation or generation is what a
test is about (those tests use the real SmolLM2 tokenizer and vLLM)."""

from __future__ import annotations


class CharTokenizer:
    """One token per character (id = code point), EOS = pad = 0, no chat template: decoding is exact, so step
    boundaries and prompt ids are easy to check by eye.

    >>> tok = CharTokenizer()
    >>> tok.encode("ab"), tok.decode([97, 98, 0]), tok.decode([97, 0], skip_special_tokens=False)
    ([97, 98], 'ab', 'a\\x00')
    """

    eos_token_id = 0
    pad_token_id = 0
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == self.eos_token_id))


def send_json(handler, body: dict, status: int = 200) -> None:
    """Answer an ``http.server`` request with ``body`` as JSON: the reply of a stand-in OpenAI-compatible server."""
    import json

    payload = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)
