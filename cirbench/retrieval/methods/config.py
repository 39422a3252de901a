"""Method configs: a method as data (YAML), turned into a Retriever.

    method: cirevl                      # a registered method kind (METHOD_KINDS), never a code path
    components:
      encoder: hf-clip:openai/clip-vit-large-patch14      # a cirbench model name
      captioner: {kind: blip2, model: Salesforce/blip2-flan-t5-xxl}
      rewriter: {backend: openai, model: gpt-3.5-turbo, base_url: https://api.openai.com/v1}
    prompts: {caption: caption-detailed, rewrite: {cirr: cirevl-contextual, default: cirevl-structural}}
    decoding: {caption: {max_tokens: 60}, rewrite: {max_tokens: 700, temperature: 0}}
    options: {}                         # the method kind's own (LDRE: ensemble, ...)
    imports: {rewrites: {file: mods.json, provenance: "repo@commit path"}}

The file is read with `yaml.safe_load`, every component is named by a registered id, and an encoder named
`package.module:factory` is refused (a config can never make cirbench import code). Any field can be
overridden from the command line (`--method-option components.rewriter.model=gpt-4o`), and a stage's prompt
replaced by a file (`--prompt-file rewrite=PATH`). Shipped configs live in `cirbench/methods/` (and the
top-level `methods/` folder links to them); `cirbench methods` lists them.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cirbench.core.options import did_you_mean
from cirbench.retrieval.base import Retriever
from cirbench.retrieval.methods.artifacts import ImportedArtifacts
from cirbench.retrieval.methods.components import Decoding, build_captioner, build_lmm
from cirbench.retrieval.methods.prompts import Prompt, get_prompt, prompt_from_file

SECTIONS = (
    "method",
    "description",
    "components",
    "prompts",
    "decoding",
    "options",
    "imports",
    "artifacts_dir",
)
COMPONENTS = ("encoder", "encoder_options", "captioner", "rewriter", "mapper", "constrainer")
XR_COMPONENTS = ("encoder", "encoder_options", "captioner", "reasoner", "verifier", "judge", "evaluator")
PARACOSM_COMPONENTS = ("encoder", "encoder_options", "editor", "t2i", "describer", "writer")
PARACOSM_STAGES = ("edit", "describe_query", "describe_gallery", "circo_text")
STAGES: tuple[str, ...] = (
    "caption", "rewrite", "template", "added", "constraints",
    "imagine_text", "imagine_visual", "questions", "verify", "judge", "pairwise",
    *PARACOSM_STAGES,
)
IMPORTS: tuple[str, ...] = ("captions", "rewrites", "constraints", "circo_text")


class MethodConfigError(ValueError):
    """A method config that cannot be used: one line naming the file and the field."""


@dataclass(frozen=True)
class MethodConfig:
    """A parsed method config with the command line's overrides applied."""

    name: str
    where: str
    data: dict[str, Any]
    base: Path | None
    """The config's folder, against which relative files (imports, replay files) are read."""
    prompt_files: Mapping[str, str]

    @property
    def kind(self) -> str:
        return str(self.data["method"])

    def section(self, name: str) -> dict[str, Any]:
        value = self.data.get(name) or {}
        if not isinstance(value, dict):
            raise MethodConfigError(
                f"{self.where}: field {name!r} must be a mapping, not {type(value).__name__}"
            )
        return value


# ------------------------------------------------------------------------------------------ reading


def shipped_methods() -> dict[str, str]:
    """name -> YAML text of the configs shipped in cirbench/methods/."""
    root = importlib.resources.files("cirbench") / "methods"
    return {
        p.name.removesuffix(".yaml"): p.read_text(encoding="utf-8")
        for p in sorted(root.iterdir(), key=lambda p: p.name)
        if p.name.endswith(".yaml")
    }


def read_method(
    source: str | Path,
    overrides: Mapping[str, Any] | None = None,
    prompt_files: Mapping[str, str] | None = None,
) -> MethodConfig:
    """A config file, or the name of a shipped config (`cirevl`, `methods/ldre.yaml`)."""
    import yaml

    p = Path(source)
    if p.is_file():
        where, base, name = str(p), p.resolve().parent, p.name.removesuffix(".yaml").removesuffix(".yml")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise MethodConfigError(f"cannot read method config {where!r}: {e}") from None
    else:
        name = p.name.removesuffix(".yaml").removesuffix(".yml")
        shipped = shipped_methods()
        if name not in shipped:
            raise MethodConfigError(
                f"method {str(source)!r} is neither a config file nor a shipped method"
                f"{did_you_mean(name, shipped)}; shipped: {', '.join(sorted(shipped))} "
                "(cirbench methods)"
            )
        where, base, text = f"cirbench/methods/{name}.yaml", None, shipped[name]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MethodConfigError(
            f"{where}: not valid YAML (or a tag that could run code): {' '.join(str(e).split())}"
        ) from None
    if not isinstance(data, dict):
        raise MethodConfigError(f"{where}: a method config is a YAML mapping with a 'method' key")
    for key in data:
        if key not in SECTIONS:
            raise MethodConfigError(
                f"{where}: unknown field {key!r}{did_you_mean(str(key), SECTIONS)}; "
                f"known: {', '.join(SECTIONS)}"
            )
    for dotted, value in (overrides or {}).items():
        _set(data, dotted, value, where)
    kind = data.get("method")
    if kind not in METHOD_KINDS:
        raise MethodConfigError(
            f"{where}: field 'method' must name a method kind, not {kind!r}"
            f"{did_you_mean(str(kind), METHOD_KINDS)}; known: {', '.join(METHOD_KINDS)}"
        )
    for stage in prompt_files or {}:
        if stage not in STAGES:
            raise MethodConfigError(
                f"--prompt-file {stage}=...: unknown stage{did_you_mean(stage, STAGES)}; "
                f"stages: {', '.join(STAGES)}"
            )
    return MethodConfig(name, where, data, base, dict(prompt_files or {}))


def _set(data: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    """`--method-option a.b.c=value`: set a field, creating mappings below a known section."""
    keys = [k for k in dotted.split(".") if k]
    if not keys or keys[0] not in SECTIONS:
        head = keys[0] if keys else dotted
        raise MethodConfigError(
            f"--method-option {dotted}: unknown field {head!r}"
            f"{did_you_mean(head, SECTIONS)}; known: {', '.join(SECTIONS)}"
        )
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise MethodConfigError(f"--method-option {dotted}: {k!r} in {where} is not a mapping")
        node = nxt
    node[keys[-1]] = value


# ------------------------------------------------------------------------------------------ building


def _decoding(cfg: MethodConfig, stage: str, default: Decoding) -> Decoding:
    given = cfg.section("decoding").get(stage) or {}
    if not isinstance(given, dict):
        raise MethodConfigError(f"{cfg.where}: decoding.{stage} must be a mapping")
    fields = set(default.record())
    for k in given:
        if k not in fields:
            raise MethodConfigError(
                f"{cfg.where}: decoding.{stage}.{k}: unknown{did_you_mean(k, fields)}; "
                f"known: {', '.join(sorted(fields))}"
            )
    merged = {**default.record(), **given}
    try:
        return Decoding(
            max_tokens=int(merged["max_tokens"]),
            temperature=float(merged["temperature"]),
            top_p=None if merged["top_p"] is None else float(merged["top_p"]),
            num_beams=int(merged["num_beams"]),
            n=int(merged["n"]),
        )
    except (TypeError, ValueError) as e:
        raise MethodConfigError(f"{cfg.where}: decoding.{stage}: {e}") from None


def _prompt(cfg: MethodConfig, stage: str, default: str) -> Prompt:
    if stage in cfg.prompt_files:
        return prompt_from_file(cfg.prompt_files[stage])
    value = cfg.section("prompts").get(stage, default)
    if not isinstance(value, str):
        raise MethodConfigError(f"{cfg.where}: prompts.{stage} must be a prompt id")
    return get_prompt(value, f"{cfg.where}: prompts.{stage}")


def _prompt_map(cfg: MethodConfig, stage: str, defaults: Mapping[str, str]) -> dict[str, Prompt]:
    """A per-benchmark prompt table ({task family: id, default: id}); a --prompt-file replaces all of it."""
    if stage in cfg.prompt_files:
        return {"default": prompt_from_file(cfg.prompt_files[stage])}
    value = cfg.section("prompts").get(stage, dict(defaults))
    if isinstance(value, str):
        return {"default": get_prompt(value, f"{cfg.where}: prompts.{stage}")}
    if not isinstance(value, dict):
        raise MethodConfigError(
            f"{cfg.where}: prompts.{stage} must be a prompt id or {{task: id, default: id}}"
        )
    return {str(k): get_prompt(str(v), f"{cfg.where}: prompts.{stage}.{k}") for k, v in value.items()}


def _imports(cfg: MethodConfig) -> dict[str, ImportedArtifacts]:
    out: dict[str, ImportedArtifacts] = {}
    for stage, spec in cfg.section("imports").items():
        where = f"{cfg.where}: imports.{stage}"
        if stage not in IMPORTS:
            raise MethodConfigError(
                f"{where}: unknown stage{did_you_mean(stage, IMPORTS)}; known: {', '.join(IMPORTS)}"
            )
        if not isinstance(spec, dict) or not spec.get("file") or not spec.get("provenance"):
            raise MethodConfigError(f"{where}: needs 'file' and 'provenance' (where it was released)")
        extra = set(spec) - {"file", "provenance", "id_field", "value_field"}
        if extra:
            raise MethodConfigError(f"{where}: unknown field(s) {sorted(extra)}")
        path = Path(str(spec["file"]))
        if not path.is_absolute():
            path = (cfg.base or Path.cwd()) / path
        if stage == "constraints":  # SoFT's released files: the layouts the soft reranker reads
            from cirbench.retrieval.rerank.soft import import_constraints

            if spec.get("id_field") or spec.get("value_field"):
                raise MethodConfigError(f"{where}: a constraints file takes no id_field / value_field")
            out[stage] = import_constraints(path.parent, path.name, provenance=str(spec["provenance"]))
            continue
        out[stage] = ImportedArtifacts.load(
            path.parent,
            path.name,
            provenance=str(spec["provenance"]),
            id_field=spec.get("id_field"),
            value_field=spec.get("value_field"),
        )
    return out


def _components(
    cfg: MethodConfig, device: str, known: tuple[str, ...] = COMPONENTS
) -> dict[str, Any]:
    """The encoder, the captioner and every LMM role of `known` the config names (each built once)."""
    from cirbench.models.registry import get_model

    comps = cfg.section("components")
    for key in comps:
        if key not in known:
            raise MethodConfigError(
                f"{cfg.where}: components.{key}: unknown component"
                f"{did_you_mean(str(key), known)}; known: {', '.join(known)}"
            )
    encoder = comps.get("encoder")
    if not isinstance(encoder, str) or not encoder:
        raise MethodConfigError(
            f"{cfg.where}: components.encoder must name a cirbench model (cirbench models)"
        )
    eopts = dict(comps.get("encoder_options") or {})
    if device != "cpu":
        eopts.setdefault("device", device)
    out: dict[str, Any] = {
        "clip": get_model(encoder, allow_plugins=False, **eopts)
    }  # never the config's code
    if comps.get("captioner") is not None:
        out["captioner"] = build_captioner(
            comps["captioner"], f"{cfg.where}: components.captioner", device=device, base=cfg.base
        )
    if comps.get("constrainer") is not None and cfg.kind != "soft":
        raise MethodConfigError(f"{cfg.where}: components.constrainer: only the soft method takes one")
    for role in known:
        if role in ("encoder", "encoder_options", "captioner", "mapper") or comps.get(role) is None:
            continue
        out[role] = build_lmm(comps[role], f"{cfg.where}: components.{role}", base=cfg.base)
    if comps.get("mapper") is not None:
        from cirbench.retrieval.methods.token_mapper import build_mapper

        out["mapper"] = build_mapper(comps["mapper"], f"{cfg.where}: components.mapper", base=cfg.base)
    return out


def _options(cfg: MethodConfig, known: Mapping[str, Callable[[Any], Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.section("options").items():
        if k not in known:
            raise MethodConfigError(
                f"{cfg.where}: options.{k}: unknown option of {cfg.kind}"
                f"{did_you_mean(k, known)}"
                + (f"; known: {', '.join(known)}" if known else f"; {cfg.kind} takes none")
            )
        try:
            out[k] = known[k](v)
        except (TypeError, ValueError):
            raise MethodConfigError(f"{cfg.where}: options.{k}: {v!r} is not a {known[k].__name__}") from None
    return out


def _artifacts_dir(cfg: MethodConfig) -> Path | None:
    value = cfg.data.get("artifacts_dir")
    return None if value in (None, "") else Path(str(value))


def _build_cirevl(cfg: MethodConfig, device: str) -> Retriever:
    from cirbench.retrieval.methods.cirevl import DEFAULT_REWRITE_PROMPTS, CIReVL

    _options(cfg, {})
    imports = _imports(cfg)
    return CIReVL(
        **_components(cfg, device),
        artifacts_dir=_artifacts_dir(cfg),
        name=cfg.name,
        caption_prompt=_prompt(cfg, "caption", "caption-detailed"),
        rewrite_prompts=_prompt_map(cfg, "rewrite", DEFAULT_REWRITE_PROMPTS),
        caption_decoding=_decoding(cfg, "caption", Decoding(max_tokens=60)),
        rewrite_decoding=_decoding(cfg, "rewrite", Decoding(max_tokens=700)),
        imported_captions=imports.get("captions"),
        imported_rewrites=imports.get("rewrites"),
    )


def _build_ldre(cfg: MethodConfig, device: str) -> Retriever:
    from cirbench.retrieval.methods.ldre import LDRE

    opts = _options(cfg, {"ensemble": str, "ensemble_topk": int, "ensemble_temperature": float})
    imports = _imports(cfg)
    return LDRE(
        **_components(cfg, device),
        artifacts_dir=_artifacts_dir(cfg),
        name=cfg.name,
        caption_prompt=_prompt(cfg, "caption", "caption-none"),
        rewrite_prompt=_prompt(cfg, "rewrite", "ldre-divergent"),
        caption_decoding=_decoding(cfg, "caption", Decoding(max_tokens=30, top_p=0.9, n=15)),
        rewrite_decoding=_decoding(cfg, "rewrite", Decoding(max_tokens=256, temperature=1.0)),
        imported_captions=imports.get("captions"),
        imported_rewrites=imports.get("rewrites"),
        **opts,
    )


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"{value!r} is not true or false")


def _stage_list(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(str(s).strip() for s in items if str(s).strip())


XR_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "tau": float, "rrf_k": float, "stages": _stage_list, "stage2_source": str, "top_k": int,
    "num_questions": int, "s2_mode": str, "alpha": int, "exclude_reference": _as_bool,
}


def _build_xr(cfg: MethodConfig, device: str) -> Retriever:
    from cirbench.retrieval.methods.xr import DEFAULT_DECODING, PROMPT_STAGES, XR

    opts = _options(cfg, XR_OPTIONS)
    if cfg.section("imports"):
        raise MethodConfigError(f"{cfg.where}: imports: xr takes no released intermediates (none exist)")
    return XR(
        **_components(cfg, device, XR_COMPONENTS),
        artifacts_dir=_artifacts_dir(cfg),
        name=cfg.name,
        prompts={s: _prompt(cfg, s, p) for s, p in PROMPT_STAGES.items()},
        decoding={s: _decoding(cfg, s, d) for s, d in DEFAULT_DECODING.items()},
        **opts,
    )


def _build_textual_inversion(cfg: MethodConfig, device: str) -> Retriever:
    from cirbench.retrieval.methods.textual_inversion import DEFAULT_TEMPLATES, TextualInversion

    _options(cfg, {})
    comps = _components(cfg, device)
    for key in ("captioner", "rewriter"):
        if key in comps:
            raise MethodConfigError(f"{cfg.where}: components.{key}: textual-inversion uses no {key}")
    if "mapper" not in comps:
        raise MethodConfigError(f"{cfg.where}: components.mapper: textual-inversion needs a token mapper "
                                "({kind: pic2word|searle|lincir, weights: FILE})")
    return TextualInversion(
        **comps,
        artifacts_dir=_artifacts_dir(cfg),
        name=cfg.name,
        templates=_prompt_map(cfg, "template", DEFAULT_TEMPLATES),
    )


def _build_cvsi(cfg: MethodConfig, device: str) -> Retriever:
    from cirbench.retrieval.methods.cirevl import DEFAULT_REWRITE_PROMPTS
    from cirbench.retrieval.methods.cvsi import ALPHA, BETA, CVSI, GAMMA, per_task

    opts = _options(cfg, {"alpha": per_task, "beta": per_task, "gamma": per_task, "caption_mean": str,
                          "rewrite_reply": str})
    for key, default in (("alpha", ALPHA), ("beta", BETA), ("gamma", GAMMA)):
        if key in opts and set(opts[key]) != {"default"}:  # a per-task table refines the released one
            opts[key] = {**default, **opts[key]}
    return CVSI(
        **_components(cfg, device),
        artifacts_dir=_artifacts_dir(cfg),
        name=cfg.name,
        caption_prompt=_prompt(cfg, "caption", "caption-none"),
        rewrite_prompts=_prompt_map(cfg, "rewrite", DEFAULT_REWRITE_PROMPTS),
        added_prompt=_prompt(cfg, "added", "cvsi-added-objects"),
        templates=_prompt_map(cfg, "template", {"default": "ti-cvsi"}),
        caption_decoding=_decoding(cfg, "caption", Decoding(max_tokens=30, top_p=0.9, num_beams=15, n=15)),
        rewrite_decoding=_decoding(cfg, "rewrite", Decoding(max_tokens=700)),
        added_decoding=_decoding(cfg, "added", Decoding(max_tokens=60)),
        **opts,
    )


def all_or_int(value: Any) -> int | None:
    """'all' (None: the whole gallery) or an integer >= 1."""
    if str(value).strip().lower() == "all":
        return None
    from cirbench.core.options import as_int

    return as_int(value, "depth", low=1)


def boolean(value: Any) -> bool:
    from cirbench.core.options import as_bool

    return as_bool(value, "option")


def _build_soft(cfg: MethodConfig, device: str) -> Retriever:
    from cirbench.retrieval.methods.cirevl import DEFAULT_REWRITE_PROMPTS
    from cirbench.retrieval.methods.soft import SoFT, check_filter

    opts = _options(cfg, {"lambda": float, "mode": str, "depth": all_or_int, "filter_tasks": str,
                          "allow_missing": boolean})
    if "lambda" in opts:
        opts["lam"] = opts.pop("lambda")
    check_filter(**opts)  # before any model loads
    imports = _imports(cfg)
    return SoFT(
        **_components(cfg, device),
        artifacts_dir=_artifacts_dir(cfg),
        name=cfg.name,
        caption_prompt=_prompt(cfg, "caption", "caption-detailed"),
        rewrite_prompts=_prompt_map(cfg, "rewrite", DEFAULT_REWRITE_PROMPTS),
        caption_decoding=_decoding(cfg, "caption", Decoding(max_tokens=60)),
        rewrite_decoding=_decoding(cfg, "rewrite", Decoding(max_tokens=700)),
        constraint_prompt=_prompt(cfg, "constraints", "soft-constraints"),
        constraint_decoding=_decoding(cfg, "constraints", Decoding(max_tokens=512)),
        imported_captions=imports.get("captions"),
        imported_rewrites=imports.get("rewrites"),
        imported_constraints=imports.get("constraints"),
        **opts,
    )


def _build_paracosm(cfg: MethodConfig, device: str) -> Retriever:
    from cirbench.models.registry import get_model
    from cirbench.retrieval.methods.components import build_editor, build_t2i
    from cirbench.retrieval.methods.images import ImageFormat
    from cirbench.retrieval.methods.paracosm import DEFAULT_EDIT_PROMPTS, Paracosm

    opts = _options(cfg, {"lam": float, "beta": float, "circo_text": str, "seed_policy": str,
                          "image_format": str, "image_quality": int})
    comps = cfg.section("components")
    for key in comps:
        if key not in PARACOSM_COMPONENTS:
            raise MethodConfigError(
                f"{cfg.where}: components.{key}: unknown component of paracosm"
                f"{did_you_mean(str(key), PARACOSM_COMPONENTS)}; known: {', '.join(PARACOSM_COMPONENTS)}"
            )
    encoder = comps.get("encoder")
    if not isinstance(encoder, str) or not encoder:
        raise MethodConfigError(
            f"{cfg.where}: components.encoder must name a cirbench model (cirbench models)"
        )
    for need in ("editor", "t2i", "describer"):
        if comps.get(need) is None:
            raise MethodConfigError(f"{cfg.where}: components.{need} is required by paracosm")
    eopts = dict(comps.get("encoder_options") or {})
    if device != "cpu":
        eopts.setdefault("device", device)
    editor, size = build_editor(comps["editor"], f"{cfg.where}: components.editor", device=device)
    writer = comps.get("writer")
    fmt = ImageFormat(str(opts.pop("image_format", "png")), int(opts.pop("image_quality", 95)))
    imports = _imports(cfg)
    if set(imports) - {"circo_text"}:
        raise MethodConfigError(f"{cfg.where}: imports: paracosm imports only circo_text")
    return Paracosm(
        clip=get_model(encoder, allow_plugins=False, **eopts),  # never the config's code
        editor=editor,
        edit_size=size,
        t2i=build_t2i(comps["t2i"], f"{cfg.where}: components.t2i", device=device),
        describer=build_captioner(comps["describer"], f"{cfg.where}: components.describer", device=device,
                                  base=cfg.base),
        writer=None if writer is None else build_lmm(
            writer, f"{cfg.where}: components.writer", base=cfg.base
        ),
        artifacts_dir=_artifacts_dir(cfg),
        name=cfg.name,
        edit_prompts=_prompt_map(cfg, "edit", DEFAULT_EDIT_PROMPTS),
        describe_query_prompt=_prompt(cfg, "describe_query", "paracosm-describe-short"),
        describe_gallery_prompt=_prompt(cfg, "describe_gallery", "paracosm-describe-detailed"),
        circo_text_prompt=_prompt(cfg, "circo_text", "paracosm-circo-text"),
        describe_query_decoding=_decoding(cfg, "describe_query", Decoding(max_tokens=256)),
        describe_gallery_decoding=_decoding(cfg, "describe_gallery", Decoding(max_tokens=256)),
        circo_text_decoding=_decoding(cfg, "circo_text", Decoding(max_tokens=256)),
        image_format=fmt,
        imported_circo_text=imports.get("circo_text"),
        **opts,
    )


def _xr_cost(cfg: MethodConfig) -> dict[str, str]:
    opts = cfg.section("options")
    stages = _stage_list(opts.get("stages", "s1,s2"))
    k, nq = int(opts.get("top_k", 100)), int(opts.get("num_questions", 0))
    mode = str(opts.get("s2_mode", "both"))
    q = str(nq) if nq else "|Q|"
    per = "4 LMM calls (v1, v2, rewrite, questions)" if "s2" in stages else "3 LMM calls (v1, v2, rewrite)"
    if "s2" in stages:
        calls = {"both": 2, "qa": 1, "caption": 1}[mode]
        per += f" + {calls}x{k}x{q} yes/no calls"
    if "s3" in stages:
        per += f" + {int(opts.get('alpha', 100))} two-image MLLM calls"
    return {
        "per_query": per + " + 1 reference caption when it is not a gallery image + ~5 text encodes",
        "per_gallery_item": "1 MLLM caption + 1 image encode + 1 caption text encode",
    }


def _diffusion_steps(cfg: MethodConfig, comp: str, default: int) -> int:
    section = cfg.section("components").get(comp) or {}
    call = section.get("call") if isinstance(section, dict) else None
    return int((call or {}).get("num_inference_steps", default))


@dataclass(frozen=True)
class MethodKind:
    build: Callable[[MethodConfig, str], Retriever]
    summary: str
    cost: Callable[[MethodConfig], dict[str, str]]


def _n(cfg: MethodConfig, stage: str, default: int) -> int:
    return int((cfg.section("decoding").get(stage) or {}).get("n", default))


METHOD_KINDS: dict[str, MethodKind] = {
    "cirevl": MethodKind(
        _build_cirevl,
        "caption -> LLM rewrite -> text feature vs gallery images",
        lambda cfg: {
            "per_query": "1 caption + 1 LMM call + 1 text encode",
            "per_gallery_item": "1 image encode",
        },
    ),
    "ldre": MethodKind(
        _build_ldre,
        "n sampled captions -> n LLM rewrites -> ensemble of text features",
        lambda cfg: {
            "per_query": f"{_n(cfg, 'caption', 15)} captions + {_n(cfg, 'caption', 15)} "
            f"LMM calls + {_n(cfg, 'caption', 15)} text encodes (x2 for "
            "the adaptive ensemble)",
            "per_gallery_item": "1 image encode",
        },
    ),
    "xr": MethodKind(
        _build_xr,
        "MLLM gallery captions; LLM imaginations -> hybrid similarity -> RRF; yes/no question agents",
        _xr_cost,
    ),
    "paracosm": MethodKind(
        _build_paracosm,
        "image edit -> mental image + its VLM description vs real + synthetic (text-to-image) gallery",
        lambda cfg: {
            "per_query": f"1 image edit ({_diffusion_steps(cfg, 'editor', 50)} diffusion steps) + 1 VLM "
            "description + 1 image encode + 2 text encodes (3 on FashionIQ; +1 LMM call on CIRCO)",
            "per_gallery_item": f"1 VLM description + 1 text-to-image ({_diffusion_steps(cfg, 't2i', 50)} "
            "diffusion steps) + 2 image encodes",
        },
    ),
    "cvsi": MethodKind(
        _build_cvsi,
        "n captions -> LLM rewrite + added objects; pseudo-token query; gallery captions; weighted fusion",
        lambda cfg: {
            "per_query": f"{_n(cfg, 'caption', 15)} captions + 2 LMM calls + 2 image encodes (1 raw for the "
            "mapper, 1 unit) + 1 mapper pass + 2 text encodes (3 for FashionIQ both-orders)",
            "per_gallery_item": f"1 image encode + {_n(cfg, 'caption', 15)} captions + "
            f"{_n(cfg, 'caption', 15)} text encodes",
        },
    ),
    "textual-inversion": MethodKind(
        _build_textual_inversion,
        "reference image -> mapping net -> pseudo-token in a template -> CLIP text vs gallery images",
        lambda cfg: {
            "per_query": "1 image encode + 1 mapper pass + 1 text encode (2 for FashionIQ both-orders)",
            "per_gallery_item": "1 image encode",
        },
    ),
    "soft": MethodKind(
        _build_soft,
        "CIReVL, then vision-LMM dual constraints and the soft filter over the top-K",
        lambda cfg: {
            "per_query": "1 caption + 2 LMM calls (1 rewrite, 1 vision constraint call) + 3 text encodes "
            "+ the soft filter over the top-K",
            "per_gallery_item": "1 image encode",
        },
    ),
}


def build_method(cfg: MethodConfig, *, device: str = "cpu") -> Retriever:
    """The Retriever a config describes (components loaded, prompts and imports read, nothing generated)."""
    try:
        return METHOD_KINDS[cfg.kind].build(cfg, device)
    except MethodConfigError:
        raise
    except (ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if cfg.where in str(msg):
            raise MethodConfigError(str(msg)) from None
        raise MethodConfigError(f"{cfg.where}: {msg}") from None


def load_method(
    source: str | Path,
    overrides: Mapping[str, Any] | None = None,
    prompt_files: Mapping[str, str] | None = None,
    *,
    device: str = "cpu",
) -> Retriever:
    """`cirbench eval --method SOURCE`: read the config (shipped name or file), apply overrides, build."""
    return build_method(read_method(source, overrides, prompt_files), device=device)


def describe_config(cfg: MethodConfig) -> dict[str, Any]:
    """What `cirbench methods` shows: the kind, its components, prompts and per-query cost."""
    comps = cfg.section("components")

    def comp(v: Any) -> str:
        if isinstance(v, dict):
            return ", ".join(f"{k}={v[k]}" for k in v if k not in ("lmm",)) + (
                f" ({comp(v['lmm'])})" if isinstance(v.get("lmm"), dict) else ""
            )
        return str(v)

    return {
        "name": cfg.name,
        "where": cfg.where,
        "method": cfg.kind,
        "description": str(cfg.data.get("description") or METHOD_KINDS[cfg.kind].summary),
        "components": {k: comp(v) for k, v in comps.items() if k != "encoder_options"},
        "cost": METHOD_KINDS[cfg.kind].cost(cfg),
    }


__all__ = [
    "METHOD_KINDS",
    "MethodConfig",
    "MethodConfigError",
    "build_method",
    "describe_config",
    "load_method",
    "read_method",
    "shipped_methods",
]
