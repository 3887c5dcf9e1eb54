"""The CLIP byte-level BPE tokenizer, behaving like `open_clip.tokenize` (SimpleTokenizer).

This is what VideoCrafter2's `FrozenOpenCLIPEmbedder.forward` (and so Maestro) calls before the
OpenCLIP ViT-H-14 text tower (docs/models.md, "CLIP BPE tokenizer"; fixture `clip_tokenizer`):

- clean: `ftfy.fix_text`, `html.unescape` twice, strip, collapse whitespace, lower-case;
- split with the pre-tokenisation regex (module `regex`, IGNORECASE), where the literal strings
  `<start_of_text>` / `<end_of_text>` match first and map to their special ids;
- each piece: UTF-8 bytes -> printable unicode stand-ins (`bytes_to_unicode`), the last symbol
  carries `</w>`, then merge adjacent pairs by rank (lowest rank first) until none applies;
- output `[SOT 49406] + ids + [EOT 49407]`, zero-padded to 77; longer sequences keep the first
  77 ids and set the last one to EOT.

The merges file (`bpe_simple_vocab_16e6.txt.gz`, shipped in the open_clip wheel) is not part of
this package: see `default_bpe_path` for where it is looked for.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
import zlib
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

import numpy as np

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
ENV_VAR = "MAESTRO_CLIP_BPE"
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
SOT_ID = 49406
EOT_ID = 49407
PAD_ID = 0
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
# Lines [1, N_MERGES] of the unzipped file are the merges used by open_clip (line 0 is a header).
N_MERGES = 49152 - 256 - 2

# open_clip's pattern, with the special strings first so that they win over the generic rules.
_PATTERN = (
    rf"{SOT_TOKEN}|{EOT_TOKEN}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+"
)


def default_bpe_path(path: str | os.PathLike | None = None) -> Path:
    """Where the CLIP merges file is, in this order:

    1. `path`, when given;
    2. the environment variable `MAESTRO_CLIP_BPE`;
    3. `bpe_simple_vocab_16e6.txt.gz` inside an installed `open_clip` package (located with
       `importlib.util.find_spec`, so open_clip and torch are never imported).

    Raises:
      FileNotFoundError saying how to supply the file when none of these exists.
    """
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"CLIP BPE merges file not found: {p}")
        return p
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env)
        if not p.is_file():
            raise FileNotFoundError(f"{ENV_VAR}={env} does not name a file")
        return p
    spec = find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / BPE_FILENAME
            if p.is_file():
                return p
    raise FileNotFoundError(
        f"the CLIP BPE merges file {BPE_FILENAME} was not found. Supply it in one of these ways: "
        f"pass its path (ClipTokenizer(path)), set the environment variable {ENV_VAR} to its "
        f"path, or `pip install open_clip_torch` (its wheel ships the file; open_clip is not "
        f"imported). The file is 1,356,917 bytes, sha256 "
        f"924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a."
    )


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """Byte value -> a printable unicode character, reversible.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the remaining 68
    bytes (controls, space, soft hyphen, ...) take the code points 256, 257, ... in byte order.
    The dict order (printable bytes first, then the rest) is the order of the first 256 vocabulary
    entries, so it must be kept.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean_text(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy, HTML unescape twice, whitespace collapse, lower-case."""
    import ftfy  # slow import; only needed when text is tokenized

    text = ftfy.fix_text(text)
    # Twice, like the original: '&amp;lt;' -> '&lt;' -> '<'.
    text = html.unescape(html.unescape(text)).strip()
    # str.split() splits on every unicode whitespace (so '\xa0' separates words; U+200B does not).
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """open_clip's `SimpleTokenizer` + `tokenize` for a given merges file.

    Args:
      bpe_path: the `bpe_simple_vocab_16e6.txt.gz` file; None resolves with `default_bpe_path`.
      context_length: output length (77 for every CLIP text tower here).
    """

    def __init__(
        self, bpe_path: str | os.PathLike | None = None, context_length: int = CONTEXT_LENGTH
    ):
        import regex  # needed for \p{L}; stdlib re lacks it

        self.bpe_path = default_bpe_path(bpe_path)
        self.context_length = int(context_length)
        if self.context_length < 2:
            raise ValueError(f"context_length must be >= 2 (SOT + EOT), got {context_length}")
        with gzip.open(self.bpe_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
        bad = [m for m in merges if len(m) != 2]
        if len(merges) != N_MERGES or bad:
            raise ValueError(
                f"{self.bpe_path} is not a CLIP merges file: expected {N_MERGES} lines of two "
                f"symbols after the header, got {len(merges)} lines ({len(bad)} malformed)"
            )
        self.byte_encoder = bytes_to_unicode()
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = dict(enumerate(vocab))
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        if len(vocab) != VOCAB_SIZE or self.encoder[SOT_TOKEN] != SOT_ID:
            raise ValueError(f"unexpected vocabulary size {len(vocab)} from {self.bpe_path}")
        self.ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        # The special strings are their own BPE result (a single symbol each).
        self._cache: dict[str, tuple[str, ...]] = {SOT_TOKEN: (SOT_TOKEN,), EOT_TOKEN: (EOT_TOKEN,)}
        self._pattern = regex.compile(_PATTERN, regex.IGNORECASE)

    # ------------------------------------------------------------------ BPE
    def bpe(self, piece: str) -> tuple[str, ...]:
        """Merge the symbols of one pre-token (already byte-mapped); results are cached."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(word) > 1:
            # The adjacent pair with the lowest merge rank; pairs without a rank never merge.
            best, best_rank = None, None
            for pair in zip(word[:-1], word[1:]):
                r = self.ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            # Merge every non-overlapping occurrence of `best`, left to right.
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        out = tuple(word)
        self._cache[piece] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without SOT/EOT."""
        ids: list[int] = []
        for piece in self._pattern.findall(clean_text(text)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(mapped))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Approximate inverse (for debugging): `</w>` becomes a space, padding is dropped."""
        toks = "".join(self.decoder[int(i)] for i in ids if int(i) in self.decoder and int(i))
        data = bytearray(self.byte_decoder[c] for c in toks if c in self.byte_decoder)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    # ------------------------------------------------------------------ batches
    def tokenize_with_lengths(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Like `open_clip.tokenize`, also returning the lengths before truncation.

        Args:
          texts: a string or a sequence of N strings.
        Returns:
          ids [N, context_length] int32 (SOT, ids, EOT, zeros; truncated sequences end in EOT),
          full_len [N] int32 = len([SOT] + ids + [EOT]) before truncation.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"tokenize wants strings, got {', '.join(sorted(set(bad)))}")
        n = self.context_length
        out = np.full((len(texts), n), PAD_ID, np.int32)
        full_len = np.zeros((len(texts),), np.int32)
        for row, text in enumerate(texts):
            ids = [SOT_ID, *self.encode(text), EOT_ID]
            full_len[row] = len(ids)
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = EOT_ID
            out[row, : len(ids)] = ids
        return out, full_len

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """`open_clip.tokenize(texts)`: [N, context_length] int32 token ids."""
        return self.tokenize_with_lengths(texts)[0]


@functools.cache
def _cached_tokenizer(path: str, context_length: int) -> ClipTokenizer:
    return ClipTokenizer(path, context_length)


def get_tokenizer(
    bpe_path: str | os.PathLike | None = None, context_length: int = CONTEXT_LENGTH
) -> ClipTokenizer:
    """A shared `ClipTokenizer` per (resolved file, context length): building one takes ~0.3 s."""
    return _cached_tokenizer(str(default_bpe_path(bpe_path).resolve()), int(context_length))


class HashTokenizer:
    """Texts -> [N, 77] ids without a BPE file (runlocal only): SOT, one pseudo-random id per
    whitespace word (crc32 of the lower-cased word, below the special ids), EOT, zeros. Fixed
    across runs and machines; NOT the CLIP tokenization, so never use it with real weights."""

    def __init__(self, context_length: int = 77, vocab: int = SOT_ID):
        self.context_length, self.vocab = context_length, vocab

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), self.context_length), np.int32)
        for i, t in enumerate(texts):
            ids = [zlib.crc32(w.encode()) % self.vocab for w in t.lower().split()]
            ids = [SOT_ID, *ids[: self.context_length - 2], EOT_ID]
            out[i, : len(ids)] = ids
        return out
