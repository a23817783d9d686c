"""Ready-to-copy client examples for the models page, one set per playground tab.

Each snippet's text holds MODEL where the chosen model goes: the template renders that part in a
span the page's script updates when another model (or tab) is chosen.
"""

from __future__ import annotations

from urllib.parse import urlsplit

MODEL = "@@MODEL@@"
TLS_PORT = 8443  # the port README's "TLS and pydo" section serves HTTPS on


def https_base(base: str) -> tuple[str, str]:
    """pydo sends its token only over HTTPS: the base it must use, and a comment saying how."""
    if base.startswith("https://"):
        return base, ""
    host = urlsplit(base).hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    note = (
        "# pydo sends tokens only over HTTPS. This page was opened over plain HTTP, so serve\n"
        "# infergate with TLS too:\n"
        f"#   infergate serve --port {TLS_PORT} --tls-cert server.pem --tls-key server-key.pem\n"
        '# (for a self-signed certificate add connection_verify="ca.pem" to Client(...))\n'
    )
    return f"https://{host}:{TLS_PORT}", note


def _chat(base: str) -> list[tuple[str, str]]:
    tls_base, note = https_base(base)
    return [
        (
            "curl",
            f"curl {base}/v1/chat/completions \\\n"
            '  -H "Authorization: Bearer $MODEL_ACCESS_KEY" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            f'  -d \'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "Hello!"}}]}}\'',
        ),
        (
            "openai SDK",
            "import os\nfrom openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{base}/v1/", api_key=os.environ["MODEL_ACCESS_KEY"])\n'
            "resp = client.chat.completions.create(\n"
            f'    model="{MODEL}",\n'
            '    messages=[{"role": "user", "content": "Hello!"}],\n)\n'
            "print(resp.choices[0].message.content)",
        ),
        (
            "gradient SDK",
            "import os\nfrom gradient import Gradient\n\n"
            f'client = Gradient(model_access_key=os.environ["MODEL_ACCESS_KEY"], base_url="{base}")\n'
            "resp = client.chat.completions.create(\n"
            f'    model="{MODEL}",\n'
            '    messages=[{"role": "user", "content": "Hello!"}],\n)\n'
            "print(resp.choices[0].message.content)",
        ),
        (
            "pydo",
            "import os\nfrom pydo import Client\n\n"
            + note
            + f'client = Client(token=os.environ["MODEL_ACCESS_KEY"], endpoint="{tls_base}",\n'
            f'                inference_endpoint="{tls_base}")\n'
            "resp = client.inference.create_chat_completion(body={\n"
            f'    "model": "{MODEL}",\n'
            '    "messages": [{"role": "user", "content": "Hello!"}],\n})\n'
            'print(resp["choices"][0]["message"]["content"])',
        ),
    ]


def _speech(base: str) -> list[tuple[str, str]]:
    return [
        (
            "curl",
            f"curl {base}/v1/audio/speech \\\n"
            '  -H "Authorization: Bearer $MODEL_ACCESS_KEY" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            f'  -d \'{{"model": "{MODEL}", "input": "Hello from infergate.",'
            ' "response_format": "wav"}\' \\\n'
            "  -o speech.wav",
        ),
        (
            "openai SDK",
            "import os\nfrom openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{base}/v1/", api_key=os.environ["MODEL_ACCESS_KEY"])\n'
            "audio = client.audio.speech.create(\n"
            f'    model="{MODEL}",\n'
            '    input="Hello from infergate.",\n'
            '    voice="alloy",\n'
            '    response_format="wav",\n)\n'
            'audio.write_to_file("speech.wav")',
        ),
    ]


def _image(base: str) -> list[tuple[str, str]]:
    return [
        (
            "curl",
            f"curl {base}/v1/images/generations \\\n"
            '  -H "Authorization: Bearer $MODEL_ACCESS_KEY" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            f'  -d \'{{"model": "{MODEL}", "prompt": "A lighthouse at dusk, watercolor.", '
            '"n": 1, "response_format": "b64_json"}\'',
        ),
        (
            "openai SDK",
            "import base64\nimport os\nfrom openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{base}/v1/", api_key=os.environ["MODEL_ACCESS_KEY"])\n'
            "result = client.images.generate(\n"
            f'    model="{MODEL}",\n'
            '    prompt="A lighthouse at dusk, watercolor.",\n'
            '    response_format="b64_json",\n)\n'
            'with open("image.png", "wb") as f:\n'
            "    f.write(base64.b64decode(result.data[0].b64_json))",
        ),
    ]


def snippet_sets(base: str) -> dict[str, list[tuple[str, str]]]:
    """{tab: [(title, code)]} for the chat, speech and image tabs."""
    return {"chat": _chat(base), "speech": _speech(base), "image": _image(base)}
