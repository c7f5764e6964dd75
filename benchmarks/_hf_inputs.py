"""Small Hugging Face ``transformers`` models and example inputs for them, derived from the config alone (no download).

:func:`small_config` shrinks a default config to a few layers and a width of two attention heads of the original head
size (so rope sections, partial rotary and MLA head dims stay what the model was written for), keeps per-layer
patterns (one layer of each kind), MoE and sliding-window settings consistent, and moves special token ids into the
shrunk vocabulary. :func:`example_inputs` feeds every tower the forward takes: text ids, images (plain or as
flattened patch grids), audio (through the model's own feature extractor where there is one), decoder ids, and as
many image / video / audio placeholder tokens as the model's own check says its features need.
"""
from __future__ import annotations

import importlib.util
import inspect
import re
from typing import Any, Dict, List

import torch

VOCAB = 1000
LAYERS = 2
MAX_LAYERS = 4  # one layer of each kind of a per-layer pattern, at most this many
SEQ = 8
WIDTH = 64  # width of configs without attention heads (convolutional, state-space)
HIDDEN = ("hidden_size", "d_model", "n_embd", "embed_dim", "dim", "hidden_dim", "width")
HEADS = ("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads",
         "decoder_attention_heads", "attention_heads")
KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num")
FFN = ("intermediate_size", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_ff", "n_inner", "ffn_hidden_size",
       "mlp_dim", "linear_units")
EXPERT_FFN = ("moe_intermediate_size", "shared_expert_intermediate_size", "expert_intermediate_size")
LAYER_COUNTS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers", "depth",
                "num_encoder_layers", "num_decoder_layers", "encoder_num_layers", "decoder_num_layers")
EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_routed_experts")
TOP_K = ("num_experts_per_tok", "moe_topk", "moe_k", "top_k_experts", "num_selected_experts")
OUT_WIDTH = ("hidden_size", "out_hidden_size", "text_hidden_size", "output_hidden_size", "llm_hidden_size",
             "output_dim", "projector_hidden_size")  # a tower's output size: the text width
MISC = {"n_group": 1, "topk_group": 1, "kv_lora_rank": 32, "q_lora_rank": 32, "n_groups": 1,
        "num_kv_shared_layers": 0}
PLACEHOLDERS = ("image_token_id", "image_token_index", "video_token_id", "audio_token_id", "audio_token_index")
TOKEN_ID = re.compile(r"(^|_)(token_id|token_index|token_ids|id)$")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _subconfigs(d: dict):
    """(key, dict) of the nested config dicts of a config dict (also inside lists)."""
    for k, v in d.items():
        if isinstance(v, dict) and "model_type" in v:
            yield k, v
        elif isinstance(v, list):
            for i in v:
                if isinstance(i, dict) and "model_type" in i:
                    yield k, i


def _per_layer(d: dict, n: int) -> None:
    """Keep one layer of each kind: the per-layer lists (length ``n``) sliced at the first layer of each pattern."""
    lists = {k: v for k, v in d.items() if isinstance(v, list) and len(v) == n > 1 and k != "architectures"}
    keep: List[int] = []
    seen = set()
    for i in range(n):
        sig = tuple(repr(v[i]) for v in lists.values())
        if sig not in seen:
            seen.add(sig)
            keep.append(i)
    keep = keep[:MAX_LAYERS]
    while len(keep) < min(LAYERS, n):
        keep.append(next(i for i in range(n) if i not in keep))
    keep.sort()
    for k, v in lists.items():
        d[k] = [v[i] for i in keep]
    for k in LAYER_COUNTS:
        if d.get(k) == n:
            d[k] = len(keep)


def _shrink_dict(d: dict, widths: Dict[int, int], text_width: int | None = None) -> int:
    """Shrink one config dict in place (sub-configs too); returns its new width. ``text_width``: the shrunk text
    model's width, which the output sizes of the other towers (and a composite config's own width) must match."""
    subs = list(_subconfigs(d))
    text = d.get("text_config") if isinstance(d.get("text_config"), dict) else None
    if text is not None and text_width is None:
        text_width = _shrink_dict(text, widths)
    composite = bool(subs)
    primary = next((k for k in HIDDEN if _is_int(d.get(k))), None)
    if _is_int(d.get("embed_dim")) and _is_int(d.get("hidden_size")) and d["embed_dim"] != d["hidden_size"]:
        primary = "embed_dim"  # a vision tower whose hidden_size is its output size
    heads_key = next((k for k in HEADS if _is_int(d.get(k)) and d[k] > 0), None)
    new = WIDTH
    if primary:
        old = d[primary]
        if composite and text_width:
            new = text_width
        elif heads_key:
            heads = d[heads_key]
            explicit = _is_int(d.get("head_dim")) and d["head_dim"] > 0
            head_dim = d["head_dim"] if explicit else old // heads
            if "head_dim" in d and not explicit and d["head_dim"] is None:
                d["head_dim"] = head_dim  # a default config that leaves it to a checkpoint
            new = 2 * head_dim // (d["expand"] if _is_int(d.get("expand")) else 1)  # state-space: heads span expand
            for k in HEADS:
                if _is_int(d.get(k)) and d[k] > 0:
                    d[k] = 2
            for k in KV_HEADS:
                if _is_int(d.get(k)) and d[k] > 0:
                    d[k] = 2 if d[k] >= heads else 1
                elif k in d and d[k] is None:  # None: as many as the query heads
                    d[k] = 2
        for k in HIDDEN:
            if d.get(k) == old:
                d[k] = new
        widths.setdefault(old, new)
    if text_width and d is not text:
        for k in OUT_WIDTH:
            if _is_int(d.get(k)) and k != primary:
                d[k] = text_width
    for k in FFN:
        if _is_int(d.get(k)):
            d[k] = 2 * new
        elif isinstance(d.get(k), list) and all(_is_int(i) for i in d[k]):  # per layer
            d[k] = [2 * new] * len(d[k])
    for k in EXPERT_FFN:
        if _is_int(d.get(k)):
            d[k] = new
    for k in EXPERTS:
        if _is_int(d.get(k)) and d[k] > 4:
            d[k] = 4
    for k in TOP_K:
        if _is_int(d.get(k)) and d[k] > 2:
            d[k] = 2
    for k, v in MISC.items():
        if _is_int(d.get(k)) and d[k] > v:
            d[k] = v
    if _is_int(d.get("first_k_dense_replace")):
        d["first_k_dense_replace"] = min(d["first_k_dense_replace"], 1)
    for k, v in list(d.items()):
        if "vocab_size" in k and _is_int(v) and v > VOCAB:
            d[k] = VOCAB
    if _is_int(d.get("max_position_embeddings")):
        d["max_position_embeddings"] = min(d["max_position_embeddings"], 2048)
    if _is_int(d.get("sliding_window")) and d["sliding_window"] > SEQ // 2 or (
            "sliding_window" in d and d["sliding_window"] is None and "sliding_attention" in d.get("layer_types", ())):
        d["sliding_window"] = SEQ // 2
    patch = d.get("patch_size")
    if _is_int(patch) and _is_int(d.get("image_size")) and d["image_size"] > 16 * patch:
        d["image_size"] = 16 * patch
    n = next((d[k] for k in LAYER_COUNTS if _is_int(d.get(k)) and d[k] > 0), None)
    if n:
        _per_layer(d, n)
        new_n = next(d[k] for k in LAYER_COUNTS if _is_int(d.get(k)) and d[k] > 0)
        new_n = new_n if new_n < n else min(n, LAYERS)
        for k, v in d.items():  # layer indices (taps, global-attention layers) move to the same relative depth
            if (k.endswith(("_indexes", "_indices", "_layer_ids", "_layer_idx")) and isinstance(v, (list, tuple)) and v
                    and all(_is_int(i) and 0 <= i < n for i in v)):
                d[k] = sorted({i * new_n // n for i in v})
        for k in LAYER_COUNTS:
            if _is_int(d.get(k)) and d[k] > LAYERS and not any(isinstance(v, list) and len(v) == d[k] for v in
                                                                d.values()):
                d[k] = LAYERS
    for _, sub in subs:
        if sub is not text:
            _shrink_dict(sub, widths, text_width)
    return new


def _fix_widths(d: dict, widths: Dict[int, int], done: set) -> None:
    """Other width fields of any sub-config that equalled a shrunk width follow it."""
    for k, v in d.items():
        if (_is_int(v) and v in widths and v not in widths.values()
                and (k.endswith(("hidden_size", "_dim", "hidden_dim", "projection_size")) or k in HIDDEN)):
            d[k] = widths[v]
        elif (isinstance(v, list) and len(v) > 1 and len(set(map(repr, v))) == 1 and _is_int(v[0]) and v[0] in widths
              and k.endswith(("channels", "_dims", "hidden_sizes"))):  # one width repeated per stage
            d[k] = [widths[v[0]]] * len(v)
    for _, sub in _subconfigs(d):
        _fix_widths(sub, widths, done)


def _token_ids(d: dict, ids: Dict[int, int]) -> None:
    """Special token ids outside the shrunk vocabulary move into its top end (the same id to the same id)."""
    for k, v in d.items():
        if k in PLACEHOLDERS and v is None and any(k2 in d for k2 in ("text_config", "vision_config")):
            d[k] = VOCAB - 1 - len(ids)  # a default config that leaves it to the processor
            ids[-len(ids) - 1] = d[k]
        elif TOKEN_ID.search(k):
            if _is_int(v) and v >= VOCAB:
                d[k] = ids.setdefault(v, VOCAB - 1 - len(ids))
            elif isinstance(v, list) and all(_is_int(i) for i in v):
                d[k] = [ids.setdefault(i, VOCAB - 1 - len(ids)) if i >= VOCAB else i for i in v]
    for _, sub in _subconfigs(d):
        _token_ids(sub, ids)


def small_config(cfg):
    """A small random-init copy of ``cfg`` (see the module docstring)."""
    d = cfg.to_dict()
    widths: Dict[int, int] = {}
    _shrink_dict(d, widths)
    _fix_widths(d, widths, set())
    _token_ids(d, {})
    return type(cfg).from_dict(d)


# ---------------------------------------------------------------------------------------------------- inputs

def _special_ids(cfg) -> set:
    out = set()
    for k, v in cfg.to_dict().items():
        if TOKEN_ID.search(k):
            out.update([v] if _is_int(v) else [i for i in v if _is_int(i)] if isinstance(v, list) else [])
    for k in dir(cfg):
        sub = getattr(cfg, k, None) if not k.startswith("_") and k.endswith("config") else None
        if sub is not None and hasattr(sub, "to_dict") and sub is not cfg:
            out |= _special_ids(sub)
    return out


def _vocab(cfg) -> int:
    try:
        v = cfg.get_text_config().vocab_size
    except Exception:
        v = getattr(cfg, "vocab_size", VOCAB)
    return v if _is_int(v) and v > 1 else VOCAB


def _text(cfg, n: int = SEQ) -> torch.Tensor:
    specials = _special_ids(cfg)
    allowed = torch.tensor([i for i in range(4, _vocab(cfg)) if i not in specials])
    return allowed[torch.randint(0, len(allowed), (1, n))]


def _vision_cfg(cfg):
    return getattr(cfg, "vision_config", None) or cfg


def _get(cfg, *keys, default=None):
    for k in keys:
        v = getattr(cfg, k, None)
        if v is not None:
            return v
    return default


def _hw(v) -> tuple:
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[-1])
    if isinstance(v, dict):
        return int(v.get("height", v.get("shortest_edge", 224))), int(v.get("width", v.get("shortest_edge", 224)))
    return int(v), int(v)


def _patch_dim(model, v) -> int:
    """Length of one flattened patch: what the model's patch embedding (the first Conv3d, else a Linear named
    patch...) takes."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv3d):
            return m.weight[0].numel()
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and "patch" in name:
            return m.in_features
    p = _get(v, "patch_size", default=14)
    return _get(v, "num_channels", "in_channels", default=3) * _get(v, "temporal_patch_size", default=1) * p * p


def _image(model, cfg, params) -> Dict[str, torch.Tensor]:
    v = _vision_cfg(cfg)
    c = _get(v, "num_channels", "in_channels", "in_chans", default=3)
    if "image_grid_thw" in params or "grid_thw" in params:  # flattened patches of a (1, h, w) grid
        m = _get(v, "spatial_merge_size", "merge_size", default=1)
        h = w = 2 * m
        grid = torch.tensor([[1, h, w]])
        return {"pixel_values": torch.randn(h * w, _patch_dim(model, v)),
                ("image_grid_thw" if "image_grid_thw" in params else "grid_thw"): grid}
    patch = _get(v, "patch_size", default=None)
    size = _get(v, "image_size", "input_size", default=None)
    if size is None:
        size = 8 * patch if _is_int(patch) else 224
    h, w = _hw(size)
    x = {"pixel_values": torch.randn(1, c, h, w)}
    if "pixel_attention_mask" in params:  # a list of crops per image
        x = {"pixel_values": x["pixel_values"][:, None],
             "pixel_attention_mask": torch.ones(1, 1, h, w, dtype=torch.bool)}
    if "high_res_pixel_values" in params and getattr(cfg, "high_res_vision_config", None) is not None:
        hr = _hw(_get(cfg.high_res_vision_config, "image_size", default=1024))
        x["high_res_pixel_values"] = torch.randn(1, c, *hr)
    if "image_sizes" in params:
        x["image_sizes"] = torch.tensor([[h, w]])
    if "pixel_mask" in params:
        x["pixel_mask"] = torch.ones(1, h, w, dtype=torch.long)
    return x


_AUDIO_MASKS = ("input_features_mask", "feature_attention_mask", "padding_mask", "attention_mask")


def _audio(model, cfg, params) -> Dict[str, torch.Tensor]:
    """Features from the model's own feature extractor (default settings) on one second of noise."""
    import transformers
    from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES

    subs = [getattr(cfg, k) for k in ("audio_config", "encoder_config", "encoder") if hasattr(getattr(cfg, k, None),
                                                                                             "model_type")]
    a = next((c for c in [cfg, *subs] if _get(c, "num_mel_bins", "n_mels") is not None), subs[0] if subs else cfg)
    parts = cfg.model_type.split("_")  # a component (``x_encoder``, ``x_thinker``) uses the feature extractor of x
    name = next((FEATURE_EXTRACTOR_MAPPING_NAMES[t] for t in ["_".join(parts[:i]) for i in range(len(parts), 0, -1)]
                 + [c.model_type for c in subs] if t in FEATURE_EXTRACTOR_MAPPING_NAMES), None)
    key = "input_features" if "input_features" in params else "input_values"
    mel = _get(a, "num_mel_bins", "n_mels", default=None)
    if name is not None:
        cls = getattr(transformers, name)
        fe = cls(feature_size=mel) if mel and "feature_size" in inspect.signature(cls.__init__).parameters else cls()
        sr = getattr(fe, "sampling_rate", 16000)
        out = fe(torch.randn(sr).numpy() * 0.1, sampling_rate=sr, return_tensors="pt", return_attention_mask=True)
        x = {key: out[key] if key in out else next(iter(out.values()))}
        mask = next((out[k] for k in ("attention_mask", "padding_mask") if k in out), None)
        for k in _AUDIO_MASKS:
            if mask is not None and k in params and not (k == "attention_mask" and "input_ids" in params):
                x[k] = mask
                break
        return x
    if key == "input_values":
        return {key: torch.randn(1, 16000)}
    mel = mel or _get(a, "feature_size", default=80)
    frames = 2 * _get(a, "max_source_positions", default=1500)
    x = {key: torch.randn(1, mel, frames)}
    mask = next((k for k in _AUDIO_MASKS if k in params and (k != "attention_mask" or "input_ids" not in params)),
                None)
    if mask:
        x[mask] = torch.ones(1, frames, dtype=torch.long)
    return x


def _sequences(cfg, params) -> Dict[str, torch.Tensor]:
    """Time series and trajectories: the inputs named after what they hold, sized from the config."""
    x: Dict[str, torch.Tensor] = {}
    if "states" in params:  # a decision transformer's (return, state, action) trajectory
        x = {"states": torch.randn(1, SEQ, cfg.state_dim), "actions": torch.randn(1, SEQ, cfg.act_dim),
             "rewards": torch.randn(1, SEQ, 1), "returns_to_go": torch.randn(1, SEQ, 1),
             "timesteps": torch.arange(SEQ)[None], "attention_mask": torch.ones(1, SEQ, dtype=torch.long)}
    if "past_values" in params:
        n = 4 * _get(cfg, "patch_length", default=16)
        x["past_values"] = torch.randn(1, n)
        if "past_values_padding" in params:
            x["past_values_padding"] = torch.zeros(1, n, dtype=torch.long)
        if "freq" in params:
            x["freq"] = torch.zeros(1, dtype=torch.long)
    return {k: v for k, v in x.items() if k in params}


def _patches(cfg, params) -> Dict[str, torch.Tensor]:
    """Pix2Struct-style ``flattened_patches`` (row and column index in the first two features), and for a model
    that places the image embeddings into the text (Kosmos-2.5: one position per latent query) the text with them."""
    if "flattened_patches" not in params:
        return {}
    vision = getattr(cfg, "vision_config", None) or cfg
    n, side = 16, 4
    fp = torch.randn(1, n, vision.patch_embed_hidden_size + 2)
    fp[..., 0] = torch.arange(n) // side + 1
    fp[..., 1] = torch.arange(n) % side + 1
    x = {"flattened_patches": fp}
    q = _get(cfg, "latent_query_num")
    if "image_embeds_position_mask" in params and _is_int(q):
        x["input_ids"] = torch.randint(0, 100, (1, SEQ + q))
        x["image_embeds_position_mask"] = torch.zeros_like(x["input_ids"])
        x["image_embeds_position_mask"][:, 1:1 + q] = 1
        if "attention_mask" in params:
            x["attention_mask"] = torch.ones_like(x["input_ids"])
    return x


_MISMATCH = re.compile(r"(Image|Video|Audio) features and \w+ tokens do not match[:,] tokens: (\d+), features:? (\d+)")


def example_inputs(model, cfg) -> Dict[str, Any]:
    """Inputs for ``model(**x)`` that run every tower its forward takes."""
    params = inspect.signature(model.forward).parameters
    x: Dict[str, Any] = {}
    if "pixel_values" in params:
        x.update(_image(model, cfg, params))
    if "input_features" in params or "input_values" in params:
        x.update(_audio(model, cfg, params))
    if "input_ids" in params:
        x["input_ids"] = _text(cfg)
        if "attention_mask" in params and "attention_mask" not in x:
            x["attention_mask"] = torch.ones_like(x["input_ids"])
        if "token_type_ids" in params:
            x["token_type_ids"] = torch.zeros_like(x["input_ids"])
    if "decoder_input_ids" in params:
        x["decoder_input_ids"] = _text(cfg)
    if "global_attention_mask" in params and "input_ids" in x:  # the first token attends globally
        x["global_attention_mask"] = torch.zeros_like(x["input_ids"])
        x["global_attention_mask"][:, 0] = 1
    if "input_boxes" in params and "pixel_values" in x and importlib.util.find_spec("torchvision"):  # box prompt
        x["input_boxes"] = torch.tensor([[[0.5, 0.5, 0.4, 0.4]]])
        if "input_boxes_labels" in params:
            x["input_boxes_labels"] = torch.ones(1, 1, dtype=torch.long)
    x.update(_sequences(cfg, params))
    x.update(_patches(cfg, params))
    try:
        return _placeholders(model, cfg, dict(x), params)
    except Exception as e:
        try:
            y = _processor_images(cfg, params)
        except Exception:
            y = {}
        if not y:
            raise
        try:
            return _placeholders(model, cfg, {**{k: v for k, v in x.items() if k not in _VISION_KEYS}, **y}, params)
        except Exception:
            raise e from None


_VISION_KEYS = ("pixel_values", "image_sizes", "pixel_attention_mask", "image_grid_thw", "grid_thw", "pixel_mask")


def _processor_images(cfg, params) -> Dict[str, torch.Tensor]:
    """Images as the model's own image processor (default settings, PIL backend) lays them out, for the layouts a
    config does not spell out (tiles, crops, patch positions); its ``image_*`` fields named ``pixel_*`` if the
    forward wants those."""
    import numpy as np
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    parts = cfg.model_type.split("_")
    names = next((IMAGE_PROCESSOR_MAPPING_NAMES[t] for t in ["_".join(parts[:i]) for i in range(len(parts), 0, -1)]
                  if IMAGE_PROCESSOR_MAPPING_NAMES.get(t)), None)
    name = names.get("pil") if isinstance(names, dict) else names
    if name is None:
        return {}
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")
    out = getattr(transformers, name)()(images=[image], return_tensors="pt")
    x = {}
    for k, v in out.items():
        k = k if k in params else k.replace("image_", "pixel_")
        if k in params and isinstance(v, torch.Tensor) and k != "attention_mask":
            x[k] = v
    return x if "pixel_values" in x else {}


def _placeholders(model, cfg, x: Dict[str, Any], params) -> Dict[str, Any]:
    """Put as many image / audio placeholder tokens into the text as the model's own check says its features need."""
    placeholders = {m: _get(cfg, f"{m}_token_id", f"{m}_token_index") for m in ("image", "audio")}
    placeholders = {m: t for m, t in placeholders.items() if _is_int(t) and "input_ids" in x
                    and (m == "image" and "pixel_values" in x or m == "audio" and
                         ("input_features" in x or "input_values" in x))}
    counts = {m: 1 for m in placeholders}
    text = x["input_ids"][0].tolist() if "input_ids" in x else []
    for _ in range(2 * len(placeholders) + 1):
        if placeholders:
            ids = text[:SEQ // 2] + sum(([placeholders[m]] * counts[m] for m in placeholders), []) + text[SEQ // 2:]
            x["input_ids"] = torch.tensor([ids])
            if "attention_mask" in x:
                x["attention_mask"] = torch.ones_like(x["input_ids"])
            if "token_type_ids" in x:
                x["token_type_ids"] = torch.zeros_like(x["input_ids"])
            if "mm_token_type_ids" in params:
                x["mm_token_type_ids"] = (x["input_ids"] == placeholders.get("image", -1)).int()
        try:
            with torch.no_grad():
                model(**x)
            return x
        except Exception as e:
            match = _MISMATCH.search(str(e))
            if not match:
                raise
            tokens, features = int(match.group(2)), int(match.group(3))
            if tokens == features:  # the check compares element counts, not feature vectors
                features //= cfg.get_text_config().hidden_size
            counts[match.group(1).lower()] = features
    return x
