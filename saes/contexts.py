"""What dictionary features respond to: their top-activating contexts in a text corpus.

For each requested feature (site -> feature indices), over every token of the corpus:

    density         fraction of the corpus' tokens where the feature is > 0
    max_activation  its largest activation
    contexts        its k strongest windows of text, strongest first: one per chunk of a
                    document (the chunk's strongest token), ``window = (before, after)`` tokens
                    around it, the marked token's index in the window and its activation

Only the requested features are encoded (``Dictionary.encode_features``: their columns of
W_enc), from the plain model's activations at their sites (the splice is the identity in the
forward pass), in batches of chunks; each forward stops after the last block a site needs.
Documents are cut into chunks of at most ``max_tokens`` tokens (and of the corpus' own
``max_tokens``, the context its dictionaries saw, and the model's n_ctx); a BOS the model
prepends and padding are no corpus tokens. Cost: one truncated forward over the corpus plus
d_in × n_features per token and site; the contexts' token strings are decoded for the kept
windows only. A circuit's features (circuits.features) and a dictionary card
(saes.trained.card) are read this way.

``FeatureContexts.save`` writes ``features.json``::

    {"format": "circuits.features/1",
     "corpus": {"name": str, "n_documents": int, "n_tokens": int}, "k": int, "window": [b, a],
     "features": {"<site>/<feature>": {"site", "feature", "density", "max_activation",
                                       "contexts": [{"tokens": [str], "mark": int,
                                                     "activation": float}]}}}
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saes.corpus import Corpus
from saes.splice import SplicedModel, TLHook

FORMAT = "circuits.features/1"
K, WINDOW, MAX_TOKENS = 10, (8, 2), 128  # defaults: contexts kept, tokens around, chunk length


@dataclass(frozen=True)
class Context:
    """A window of text around a feature's strongest token in one chunk of the corpus."""

    tokens: tuple[str, ...]
    mark: int  # index of the activating token in ``tokens``
    activation: float

    @property
    def text(self) -> str:
        """The window as one string, the activating token in «guillemets»."""
        marked = [f"«{t}»" if i == self.mark else t for i, t in enumerate(self.tokens)]
        return "".join(marked).strip()


@dataclass(frozen=True)
class FeatureContext:
    """One feature's reading of the corpus."""

    site: str
    feature: int
    density: float  # fraction of corpus tokens where it is > 0
    max_activation: float
    contexts: tuple[Context, ...]  # strongest first, at most k, each with activation > 0


@dataclass(frozen=True)
class CorpusInfo:
    name: str
    n_documents: int
    n_tokens: int


@dataclass
class FeatureContexts:
    """Feature contexts of some features, keyed ``"{site}/{feature}"``, from one corpus."""

    corpus: CorpusInfo
    k: int
    window: tuple[int, int]
    features: dict[str, FeatureContext] = field(default_factory=dict)

    def get(self, site: str, feature: int) -> FeatureContext | None:
        return self.features.get(key(site, feature))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "corpus": vars(self.corpus), "k": self.k,
            "window": list(self.window),
            "features": {name: {"site": f.site, "feature": f.feature, "density": f.density,
                                "max_activation": f.max_activation,
                                "contexts": [{"tokens": list(c.tokens), "mark": c.mark,
                                              "activation": c.activation} for c in f.contexts]}
                         for name, f in self.features.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> FeatureContexts:
        """From ``to_json``'s dict; another structure is a ValueError saying what is wrong."""
        try:
            if data["format"] != FORMAT:
                raise ValueError(f"its format is {data['format']!r}, not {FORMAT!r}")
            features = {
                name: FeatureContext(
                    str(f["site"]), int(f["feature"]), float(f["density"]),
                    float(f["max_activation"]),
                    tuple(Context(tuple(map(str, c["tokens"])), int(c["mark"]),
                                  float(c["activation"])) for c in f["contexts"]))
                for name, f in data["features"].items()}
            corpus = CorpusInfo(str(data["corpus"]["name"]), int(data["corpus"]["n_documents"]),
                                int(data["corpus"]["n_tokens"]))
            before, after = data["window"]
            return cls(corpus, int(data["k"]), (int(before), int(after)), features)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            what = f"lacks {err}" if isinstance(err, KeyError) else str(err)
            raise ValueError(f"not a {FORMAT} file: {what}") from err

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureContexts:
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text()))
        except ValueError as err:  # json's errors and from_json's
            raise ValueError(f"{path}: {err}; delete it and compute the contexts again "
                             "(`circuits features RUN`)") from err


def key(site: str, feature: int) -> str:
    """A feature's key in features.json: ``"{site}/{feature}"``, never a position."""
    return f"{site}/{feature}"


def feature_contexts(
    model: SplicedModel,
    features: Mapping[str, Sequence[int]],
    corpus: Corpus,
    *,
    k: int = K,
    window: tuple[int, int] = WINDOW,
    max_tokens: int = MAX_TOKENS,
    batch_size: int = 64,
    reuse: FeatureContexts | None = None,
    progress: bool = False,
) -> FeatureContexts:
    """Density, largest activation and top-k contexts of ``features`` (site -> feature indices)
    over ``corpus``. ``reuse``: earlier contexts of the same corpus, k and
    window; the features it holds are taken from it, only the others are encoded."""
    if k < 1 or min(window) < 0:
        raise ValueError(f"k must be >= 1 and the window's sizes >= 0, got k={k}, "
                         f"window={window}")
    window = (int(window[0]), int(window[1]))
    wanted = {site: sorted({int(i) for i in indices}) for site, indices in features.items()}
    _check_features(model, wanted)
    tokenizer = model.tokenizer
    limit = min(max_tokens, corpus.max_tokens or max_tokens,
                model.cfg.n_ctx - int(model.prepend_bos))
    chunks, n_documents = _chunks(tokenizer, corpus.documents, limit)
    info = CorpusInfo(corpus.name, n_documents, sum(len(c) for c in chunks))
    if not chunks:
        raise ValueError(f"corpus {corpus.name!r} tokenizes to no tokens; pass one with text")
    out = FeatureContexts(info, k, window)
    if reuse is not None and (reuse.corpus, reuse.k, reuse.window) == (info, k, window):
        out.features = {key(s, i): reuse.features[key(s, i)] for s, idx in wanted.items()
                        for i in idx if key(s, i) in reuse.features}
    todo = {s: [i for i in idx if key(s, i) not in out.features] for s, idx in wanted.items()}
    todo = {s: idx for s, idx in todo.items() if idx}
    if todo:
        stats = _scan(model, todo, chunks, k, batch_size, progress)
        for site, (count, top, best, where) in stats.items():
            for j, feature in enumerate(todo[site]):
                contexts = tuple(_context(tokenizer, chunks[c], p, float(v), window)
                                 for v, c, p in zip(best[:, j].tolist(), where[0][:, j].tolist(),
                                                    where[1][:, j].tolist(), strict=True)
                                 if c >= 0 and v > 0)
                out.features[key(site, feature)] = FeatureContext(
                    site, feature, float(count[j]) / info.n_tokens, float(top[j]), contexts)
    order = [key(s, i) for s, idx in wanted.items() for i in idx]
    out.features = {name: out.features[name] for name in order}
    return out


def _check_features(model: SplicedModel, wanted: Mapping[str, Sequence[int]]) -> None:
    for site, indices in wanted.items():
        if site not in model.dictionaries:
            raise ValueError(f"site {site!r} has no dictionary in {model.name} (spliced sites: "
                             f"{sorted(model.dictionaries)}); load the model with the circuit's "
                             "dictionaries")
        d_sae = model.dictionaries[site].d_sae
        bad = [i for i in indices if not 0 <= i < d_sae]
        if bad:
            raise ValueError(f"feature(s) {bad[:5]} of site {site!r} are outside its dictionary "
                             f"(0 to {d_sae - 1}); load the model with the circuit's dictionaries")


def _chunks(tokenizer, documents: Sequence[str], limit: int) -> tuple[list[list[int]], int]:
    """Each document's token ids cut into pieces of at most ``limit``; and the documents with
    any token."""
    chunks: list[list[int]] = []
    used = 0
    for text in documents:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        used += bool(ids)
        chunks += [ids[i:i + limit] for i in range(0, len(ids), limit)]
    return chunks, used


@torch.no_grad()
def _scan(model: SplicedModel, todo: Mapping[str, list[int]], chunks: list[list[int]], k: int,
          batch_size: int, progress: bool) -> dict[str, tuple[Tensor, Tensor, Tensor, tuple]]:
    """site -> (count > 0 [n], largest activation [n], top-k activations [k, n], (their chunks
    [k, n], positions [k, n])), -1 for chunks where fewer than k were found."""
    tl, device = model.transformer, model.device
    sites = [model.site(s) for s in todo]
    index = {s: torch.tensor(idx, device=device) for s, idx in todo.items()}
    stop = max(max(site.layer for site in sites), 0) + 1  # embed's hook runs in block 0
    state = {s: (torch.zeros(len(idx), dtype=torch.long), torch.full((len(idx),), -math.inf),
                 torch.full((k, len(idx)), -math.inf), torch.full((k, len(idx)), -1),
                 torch.full((k, len(idx)), -1)) for s, idx in todo.items()}
    acts: dict[str, Tensor] = {}
    hooks: list[TLHook] = [(site.hook_name, _keep(acts, site.name)) for site in sites]
    bos = [model.tokenizer.bos_token_id] if model.prepend_bos else []
    n_batches = math.ceil(len(chunks) / batch_size)
    for start, tokens, valid in tqdm(_batches(chunks, batch_size, bos, device), total=n_batches,
                                     desc="feature contexts", disable=not progress):
        with tl.hooks(fwd_hooks=hooks):
            tl(tokens, return_type=None, stop_at_layer=stop)
        for site in sites:
            x = site.vectors(acts[site.name])[:, len(bos):]  # [b, L, d_in]
            f = model.dictionaries[site.name].encode_features(x, index[site.name]).float().cpu()
            count, top, best, chunk, pos = state[site.name]
            count += ((f > 0) & valid[..., None]).sum((0, 1))
            value, at = f.masked_fill(~valid[..., None], -math.inf).max(dim=1)  # [b, n]
            top.copy_(torch.maximum(top, value.max(0).values))
            ids = torch.arange(start, start + len(f))[:, None].expand_as(value)
            values = torch.cat([best, value])  # [k + b, n]
            # strongest first; among ties the earlier chunk (stable: the kept ones come first)
            kept = values.sort(dim=0, descending=True, stable=True).indices[:k]
            best.copy_(values.gather(0, kept))
            chunk.copy_(torch.cat([chunk, ids]).gather(0, kept))
            pos.copy_(torch.cat([pos, at]).gather(0, kept))
    return {s: (count, top, best, (chunk, pos)) for s, (count, top, best, chunk, pos)
            in state.items()}


def _keep(store: dict[str, Tensor], name: str):
    def hook(x: Tensor, hook) -> None:
        store[name] = x.detach()

    return hook


def _batches(chunks: list[list[int]], size: int, bos: list[int], device: torch.device
             ) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(first chunk's index, tokens [b, len(bos) + L] right-padded, valid [b, L] bool)."""
    for start in range(0, len(chunks), size):
        group = chunks[start:start + size]
        width = max(len(c) for c in group)
        tokens = torch.zeros(len(group), len(bos) + width, dtype=torch.long)
        valid = torch.zeros(len(group), width, dtype=torch.bool)
        for row, ids in enumerate(group):
            tokens[row, :len(bos) + len(ids)] = torch.tensor(bos + ids)
            valid[row, :len(ids)] = True
        yield start, tokens.to(device), valid


def _context(tokenizer, ids: list[int], at: int, activation: float,
             window: tuple[int, int]) -> Context:
    first, stop = max(at - window[0], 0), min(at + window[1] + 1, len(ids))
    return Context(tuple(_pieces(tokenizer, ids, first, stop)), at - first, activation)


def _pieces(tokenizer, ids: list[int], first: int, stop: int) -> list[str]:
    """The strings of tokens ids[first:stop], each what it adds to the decoded text before it
    (one token of left context kept, so a word's leading space survives every tokenizer)."""
    base = max(first - 1, 0)
    before = tokenizer.decode(ids[base:first])
    pieces = []
    for j in range(first, stop):
        text = tokenizer.decode(ids[base:j + 1])
        pieces.append(text[len(before):] if text.startswith(before)
                      else tokenizer.decode(ids[j:j + 1]))
        before = text
    return pieces
