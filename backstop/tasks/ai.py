"""AI jobs: each calls an OpenAI-compatible ``POST {AI_API_URL}/chat/completions``.

Without AI_API_URL every AI job fails permanently before touching the network. Answers
400/401/403/404/405/413/422 fail permanently (retrying the same request cannot help);
429, 5xx, timeouts and network errors are retried.
"""

from __future__ import annotations

import json
import re

import requests

from ..config import settings
from ..contracts import AiContentGenerate, AiScoreRerun, AiSeoOptimize, AiTranslate
from ..errors import PermanentFailure
from ..jobs import JobContext, handler

PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 413, 422})
EXCERPT = 200
SEO_PROMPT = (
    "You are an SEO editor. Read the content and reply with only a JSON object with the "
    'keys "title" (at most 60 characters), "description" (at most 160 characters) and '
    '"keywords" (a list of at most 10 short strings). No prose, no code fence.'
)
SCORE_PROMPT = (
    "You rate content quality for publication: clarity, accuracy, structure, usefulness. "
    "Reply with the integer score from 0 to 100 first, then one sentence of reasoning."
)


class AiServiceError(Exception):
    """An AI call that may succeed later (network, timeout, 429, 5xx, malformed answer)."""


def chat(messages: list[dict], max_tokens: int, ctx: JobContext) -> dict:
    """Run one chat completion; return {"text", "model", "usage"}.

    Raises PermanentFailure when AI_API_URL is unset or the request is rejected,
    AiServiceError when a retry may help.
    """
    base = settings().ai_api_url.strip().rstrip("/")
    if not base:
        raise PermanentFailure(
            "AI_API_URL is not set: configure an OpenAI-compatible endpoint to run AI jobs",
            code="ai_not_configured")
    body = {"model": settings().ai_model, "messages": messages, "max_tokens": max_tokens}
    response = _post(f"{base}/chat/completions", body, ctx.remaining())
    _check_status(response)
    return _parse(response)


def _post(url: str, body: dict, timeout: float) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if settings().ai_api_key:
        headers["Authorization"] = f"Bearer {settings().ai_api_key}"
    try:
        return requests.post(url, json=body, headers=headers, timeout=timeout)
    except requests.Timeout:
        raise AiServiceError(f"AI endpoint {url} did not answer within {timeout:.1f} s") from None
    except requests.RequestException as exc:
        raise AiServiceError(f"AI endpoint {url} unreachable: {exc}") from None


def _check_status(response: requests.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    excerpt = " ".join(response.text[:EXCERPT].split())
    message = f"AI endpoint answered {status}: {excerpt}"
    if status in PERMANENT_STATUSES:
        raise PermanentFailure(message, code=f"ai_http_{status}")
    raise AiServiceError(message)


def _parse(response: requests.Response) -> dict:
    try:
        data = response.json()
        text = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        excerpt = " ".join(response.text[:EXCERPT].split())
        raise AiServiceError(f"AI endpoint sent no chat completion: {excerpt}") from None
    if not isinstance(text, str):
        raise AiServiceError("AI endpoint sent a completion without text content")
    return {"text": text.strip(), "model": data.get("model") or settings().ai_model,
            "usage": data.get("usage")}


@handler("ai.content.generate")
def generate_content(payload: AiContentGenerate, ctx: JobContext) -> dict:
    """Write content for a prompt in the requested language."""
    system = ("You are a careful writing assistant. Write clear, well-structured content. "
              f"Answer in the language with code {payload.language!r}.")
    return chat([{"role": "system", "content": system},
                 {"role": "user", "content": payload.prompt}], payload.max_tokens, ctx)


@handler("ai.seo.optimize")
def optimize_seo(payload: AiSeoOptimize, ctx: JobContext) -> dict:
    """Propose an SEO title, meta description and keywords for the content."""
    user = payload.content
    if payload.keywords:
        user = f"Focus keywords: {', '.join(payload.keywords)}\n\nContent:\n{payload.content}"
    result = chat([{"role": "system", "content": SEO_PROMPT},
                   {"role": "user", "content": user}], 400, ctx)
    return {**result, **parse_seo(result["text"])}


def parse_seo(text: str) -> dict:
    """The title/description/keywords object in a model reply. Raises AiServiceError."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    try:
        data = json.loads(match.group(0)) if match else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("title"), str):
        raise AiServiceError(f"AI reply is not the SEO JSON object asked for: {text[:EXCERPT]}")
    keywords = data.get("keywords") or []
    if isinstance(keywords, str):
        keywords = [k.strip() for k in keywords.split(",")]
    return {"title": data["title"].strip(), "description": str(data.get("description", "")),
            "keywords": [str(k) for k in keywords if str(k).strip()][:10]}


@handler("ai.translate")
def translate(payload: AiTranslate, ctx: JobContext) -> dict:
    """Translate text into the target language."""
    source = f" from {payload.source_language!r}" if payload.source_language else ""
    system = (f"Translate the user's text{source} into the language with code "
              f"{payload.target_language!r}. Keep meaning, tone and formatting. "
              "Reply with the translation only.")
    max_tokens = min(4_000, max(256, len(payload.text)))
    result = chat([{"role": "system", "content": system},
                   {"role": "user", "content": payload.text}], max_tokens, ctx)
    return {**result, "target_language": payload.target_language}


@handler("ai.score.rerun")
def score(payload: AiScoreRerun, ctx: JobContext) -> dict:
    """Score content 0-100; the score is parsed from the reply."""
    result = chat([{"role": "system", "content": SCORE_PROMPT},
                   {"role": "user", "content": payload.content}], 100, ctx)
    return {**result, "content_id": payload.content_id, "score": parse_score(result["text"])}


def parse_score(text: str) -> int:
    """The first integer 0-100 in a reply. Raises AiServiceError when there is none."""
    for match in re.finditer(r"(?<![\d.])(\d{1,3})(?![\d.])", text):
        value = int(match.group(1))
        if value <= 100:
            return value
    raise AiServiceError(f"AI reply holds no score from 0 to 100: {text[:EXCERPT]}")
