"""`load_diffusion_denoiser(path, σ)`: a diffusers folder or an OpenAI `.pt` → a DiffusionDenoiser and its record.

The record (`meta`) is what the sidecar stores and the load summary prints: where the model came from (layout,
weight file and SHA-256), the UNet's size, the schedule, the prediction type, t* with its rule, ᾱ_t*, the
timestep fed to the UNet, the UNet's noise level against the target 2σ, the effective σ, the flags, and the
chain noise → [−1, 1] → scale → UNet at t* → x̂₀ → clip → [0, 1] (→ resize → normalise → classifier).
"""
from __future__ import annotations

import logging
import os

import torch

from certifynet.denoise.diffusion.denoiser import DiffusionDenoiser
from certifynet.denoise.diffusion.folders import (
    find_layout,
    load_diffusers_folder,
    read_json,
    read_weights,
    weights_path,
)
from certifynet.denoise.diffusion.openai import convert_openai, is_openai_state_dict
from certifynet.denoise.diffusion.options import DiffusionOptions
from certifynet.denoise.diffusion.schedule import parse_schedule, schedule_from_config
from certifynet.errors import CertifyNetError

log = logging.getLogger(__name__)
RECORD_NAME = "certifynet_diffusion.json"   # written by train_ddpm: settings the diffusers files cannot hold
OPENAI_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def _peek_keys(path: str) -> list[str]:
    """Tensor names of a weight file without reading its data (safetensors header, or torch's mmap)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(path, framework="pt") as f:
                return list(f.keys())
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return list(obj) if isinstance(obj, dict) else []
    except Exception:  # not ours to judge here: the real loaders give the one-line error
        return []


def is_diffusion_source(path: str) -> bool:
    """True for a folder (only diffusion models come as folders) and for a weight file whose keys are an OpenAI
    UNet's (read lazily: the header or torch's mmap, not the tensors)."""
    if os.path.isdir(path):
        return True
    if not (os.path.isfile(path) and path.endswith(OPENAI_SUFFIXES)):
        return False
    keys = set(_peek_keys(path))
    return is_openai_state_dict(dict.fromkeys(keys))


def is_diffusers_folder(path: str) -> bool:
    """True for a folder in one of the three diffusers layouts with its UNet weights (`folders.find_layout`): what
    a model browser lists as a diffusion model (cheap: file names only, nothing read but a hub cache's refs/main)."""
    try:
        return os.path.isdir(path) and bool(weights_path(find_layout(path).unet_dir))
    except (CertifyNetError, OSError):
        return False


def _load_openai(path: str, opts: DiffusionOptions):
    """(unet, config, info) from an OpenAI improved/guided-diffusion state dict (openai.py)."""
    raw = read_weights(path, opts.max_bytes) if path.endswith(".safetensors") else _read_torch(path, opts.max_bytes)
    if not is_openai_state_dict(raw):
        raise CertifyNetError(f"'{path}' is not an OpenAI diffusion UNet (no time_embed/input_blocks/out keys; "
                              f"first keys {sorted(raw)[:3]})")
    return convert_openai(raw, opts.openai_heads, opts.openai_head_channels, opts.qkv_order)


def _read_torch(path: str, max_bytes: int) -> dict:
    from certifynet.denoise.diffusion.folders import _check_size
    from certifynet.models import read_checkpoint_file
    if not os.path.isfile(path):
        raise CertifyNetError(f"diffusion model '{path}' not found")
    _check_size(path, max_bytes)
    raw = read_checkpoint_file(path)
    if isinstance(raw, dict):
        for key in ("state_dict", "model", "ema"):
            if isinstance(raw.get(key), dict) and not torch.is_tensor(raw.get(key)):
                raw = raw[key]
                break
    if not isinstance(raw, dict):
        raise CertifyNetError(f"'{path}' is not a state dict")
    return {k.removeprefix("module."): v for k, v in raw.items() if torch.is_tensor(v)}


def _resolve(opts: DiffusionOptions, record: dict, sched_cfg: dict | None, openai_info: dict | None):
    """(schedule, prediction, input_range, continuous, rescale, sources): flag > folder record > files > default."""
    src = {}
    if opts.diffusion_schedule:
        schedule, src["schedule"] = parse_schedule(opts.diffusion_schedule), "flag"
    elif record.get("schedule"):
        schedule, src["schedule"] = parse_schedule(record["schedule"]), RECORD_NAME
    elif sched_cfg is not None:
        schedule, src["schedule"] = schedule_from_config(sched_cfg), "scheduler_config.json"
    elif openai_info and openai_info.get("schedule_default"):
        schedule, src["schedule"] = parse_schedule(openai_info["schedule_default"]), f"preset {openai_info['preset']}"
    else:
        raise CertifyNetError("the model's files do not say its noise schedule: pass {diffusion_schedule}",
                              "diffusion_schedule")
    prediction = (opts.diffusion_prediction or record.get("prediction_type")
                  or (sched_cfg or {}).get("prediction_type") or "epsilon")
    input_range = opts.diffusion_input_range or record.get("input_range") or "-1,1"
    continuous = bool(opts.diffusion_continuous if opts.diffusion_continuous is not None
                      else record.get("continuous_timesteps", False))
    if opts.diffusion_timestep_rescale is not None:
        rescale = float(opts.diffusion_timestep_rescale)
    elif record.get("timestep_rescale") is not None:
        rescale = float(record["timestep_rescale"])
    elif openai_info is not None:  # improved-diffusion's rescale_timesteps: t·1000/T (1 for T = 1000)
        rescale = float(openai_info.get("timestep_rescale_default") or 1000.0 / schedule.T)
    else:
        rescale = 1.0
    return schedule, prediction, input_range, continuous, rescale, src


def load_diffusion_denoiser(path: str, sigma: float, options: DiffusionOptions | None = None,
                            device="cpu", classifier_meta: dict | None = None,
                            log_summary: bool = True) -> tuple[DiffusionDenoiser, dict]:
    """(D, meta): D(x_noisy, σ) in eval mode on `device`, from a diffusers folder (flat, pipeline, hub cache) or an
    OpenAI checkpoint; offline, weights read without pickled code. `meta` is the record described above; with
    `classifier_meta` (a checkpoint's or `build_classifier`'s metadata) its chain and summary end with the
    classifier's stages. The summary is logged (`logging`, INFO) unless `log_summary` is False."""
    from certifynet.models import file_sha256
    opts = (options or DiffusionOptions()).check()
    if os.path.isdir(path):
        model = load_diffusers_folder(path, opts.max_bytes)
        unet, config, sched_cfg, weights = model.unet, model.config, model.scheduler, model.weights
        rec_path = os.path.join(model.layout.unet_dir, RECORD_NAME)
        record = read_json(rec_path) if os.path.isfile(rec_path) else {}
        origin, openai_info = {"layout": model.layout.kind}, None
    elif os.path.isfile(path):
        unet, config, openai_info = _load_openai(path, opts)
        sched_cfg, weights, record, origin = None, path, {}, dict(openai_info)
    else:
        raise CertifyNetError(f"diffusion model '{path}' not found")
    schedule, prediction, input_range, continuous, rescale, src = _resolve(opts, record, sched_cfg, openai_info)
    den = DiffusionDenoiser(unet, schedule, sigma, prediction_type=prediction, input_range=input_range,
                            t_rule=opts.diffusion_t_rule, continuous=continuous, timestep_rescale=rescale,
                            steps=opts.diffusion_steps, clip=not opts.diffusion_no_clip,
                            resolution=opts.diffusion_resolution)
    meta = {"denoiser": os.path.abspath(path), "denoiser_kind": "diffusion",
            "denoiser_weights": os.path.abspath(weights), "denoiser_sha256": file_sha256(weights),
            "diffusion": {**origin, "unet_parameters": sum(p.numel() for p in unet.parameters()),
                          "unet_config": {k: v for k, v in config.items() if not k.startswith("_")},
                          **den.config(), **den.tstar.record(), "schedule_source": src.get("schedule"),
                          "flags": opts.record(), "chain": describe_chain(den, classifier_meta)}}
    meta["summary"] = load_summary(meta)
    if log_summary:
        log.info("denoiser: %s", meta["summary"])
    return den.to(device).eval(), meta


def describe_chain(den: DiffusionDenoiser, classifier_meta: dict | None = None) -> list[str]:
    """The stages from the noisy input to the logits, with this model's numbers."""
    ts, a, b = den.tstar, den.a, den.b
    rng = "[−1, 1]" if den.input_range == "-1,1" else "[0, 1]"
    pred = {"epsilon": "x̂₀ = (x_t* − √(1−ᾱ)·ε̂)/√ᾱ", "sample": "x̂₀ = UNet output",
            "v_prediction": "x̂₀ = √ᾱ·x_t* − √(1−ᾱ)·v̂"}[den.prediction_type]
    chain = [f"noise: x + δ, δ ~ N(0, σ²I), σ = {ts.sigma:g}",
             f"{rng}: {a:g}·(x + δ) {'−' if b < 0 else '+'} {abs(b):g} (noise std {a * ts.sigma:g})",
             f"scale: × √ᾱ_t* = {ts.alpha_bar ** 0.5:.5f}",
             f"UNet at t* = {ts.t:g} ({ts.rule}; fed {ts.model_timestep:g}; its noise level {ts.noise_level:.4f} vs "
             f"{ts.target:.4f}, effective σ {ts.effective_sigma:.4f})"
             + (f", then {den.steps - 1} more reverse steps with fresh noise" if den.steps > 1 else ""),
             pred, f"clip to {rng}" if den.clip else "no clip",
             f"[0, 1]: (x̂₀ {'+' if b < 0 else '−'} {abs(b):g})/{a:g}"]
    if classifier_meta:
        size = classifier_meta.get("classifier_input_size")
        if size:
            chain.append(f"resize to {size}×{size} ({classifier_meta.get('classifier_resize')}, on the device)")
        norm = classifier_meta.get("classifier_normalization") or classifier_meta.get("normalization")
        if isinstance(norm, dict):
            chain.append(f"normalise (mean {norm.get('mean')}, std {norm.get('std')})")
        chain.append(f"classifier {classifier_meta.get('classifier') or classifier_meta.get('arch')}")
    return chain


def load_summary(meta: dict) -> str:
    """One line for the load summary: what was loaded, schedule, t*, ᾱ_t*, rule, effective σ, and the chain."""
    d = meta["diffusion"]
    sched = d["schedule"]
    where = d.get("preset") or d["layout"]
    return (f"diffusion UNet ({d['unet_parameters']:,} parameters, {where}) from {meta['denoiser']}; schedule "
            f"{sched['kind']} T={sched['T']}; {d['prediction_type']}-prediction; t* = {d['t_star']} "
            f"(rule {d['t_rule']}), ᾱ_t* = {d['alpha_bar']:.5f}, UNet fed t = {d['model_timestep']:g}, "
            f"effective σ {d['effective_sigma']:.4f} for σ = {d['sigma']:g}; steps {d['steps']}; chain: "
            + " → ".join(d["chain"]))
