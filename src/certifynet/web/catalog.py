"""The models page's catalogue: checkpoints found under the model folders, described once and cached.

A file is described by `load_checkpoint` (weights_only, the CLI's one loader: its inflated size bounded and
its header validated like user input) or, failing that, by `load_denoiser`; a diffusion model (a diffusers folder,
or an OpenAI `.pt`) by `load_diffusion_denoiser`; the description (arch, dataset, training σ and k, parameter
count, SHA-256, source layout) is cached per (path, size, mtime), so listing the page costs a directory walk, not
a hash or a load. A file that neither loader accepts is listed as refused,
with the loader's one-line error: one bad file never breaks the pages that list the models.
A file whose architecture cannot be told from its keys is described with the architecture (and dataset) the
user gave for it on the models page (`<results>/web/models.json`); its commands then pass `--arch`/`--dataset`.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass

from certifynet.errors import CertifyNetError
from certifynet.records import atomic_write
from certifynet.web.jobs import JOB_ID

CHECKPOINT_SUFFIXES = (".pth", ".pth.tar")
DIFFUSION_SUFFIXES = (".pt",)   # OpenAI improved/guided-diffusion checkpoints (listed when their keys say so)


def is_checkpoint_name(name: str) -> bool:
    return name.lower().endswith(CHECKPOINT_SUFFIXES) and not name.startswith(".")


@dataclass
class ModelEntry:
    """One checkpoint file: kind 'classifier', 'denoiser' or 'refused' (with the loader's one-line error)."""
    path: str            # relative to the app root (what forms and CLI commands use)
    kind: str
    size: int
    sha256: str = ""
    arch: str = ""
    dataset: str = ""
    sigma: float | str | None = None   # a denoiser's: its training σ values, joined
    k: int = 0
    params: int = 0
    source: str = ""
    layout: str = ""
    error: str = ""
    uploaded: bool = False
    arch_given: bool = False   # described with an architecture the user gave (models.json)

    def as_dict(self) -> dict:
        return asdict(self)


def _param_count(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _one_line(e: Exception, abspath: str, shown: str) -> str:
    """A loader's refusal as one line naming the file as `shown` (a bug: its type, never a traceback)."""
    if isinstance(e, CertifyNetError):
        text = str(e)
    else:
        text = f"checkpoint '{abspath}' could not be read ({type(e).__name__})"
    return " ".join(text.replace(abspath, shown).split())


def describe_diffusion(abspath: str, shown: str) -> dict:
    """Fields of a ModelEntry for a diffusion model (any σ: t* is chosen when it is used)."""
    from certifynet.denoise.diffusion import load_diffusion_denoiser
    try:
        den, meta = load_diffusion_denoiser(abspath, 0.5, log_summary=False)
    except Exception as e:  # noqa: BLE001 - as describe_checkpoint: one bad model never takes the pages down
        return dict(kind="refused", error=_one_line(e, abspath, shown))
    d = meta["diffusion"]
    return dict(kind="denoiser", sha256=meta["denoiser_sha256"], arch="diffusion", params=d["unet_parameters"],
                source=d.get("preset") or "diffusers", layout=d["layout"])


def describe_checkpoint(abspath: str, shown: str, arch: str | None = None, dataset: str | None = None) -> dict:
    """Fields of a ModelEntry for the file (or diffusers folder) at `abspath` (errors name it as `shown`);
    `arch`/`dataset` as the CLI's --arch/--dataset."""
    from certifynet.denoise.diffusion import is_diffusion_source
    from certifynet.models import file_sha256, load_checkpoint
    if is_diffusion_source(abspath):
        return describe_diffusion(abspath, shown)
    try:
        ck = load_checkpoint(abspath, arch=arch, dataset=dataset)
        return dict(kind="classifier", sha256=ck.sha256, arch=ck.arch, dataset=ck.dataset, sigma=ck.sigma, k=ck.k,
                    params=_param_count(ck.model), source=ck.source, layout=ck.layout)
    except Exception as e:  # noqa: BLE001 - a file under models/ must never take the pages down
        classifier_error = _one_line(e, abspath, shown)
    try:
        from certifynet.denoise import load_denoiser
        den = load_denoiser(abspath)
        trained = (den.sigma or {}).get("values") or []
        return dict(kind="denoiser", sha256=file_sha256(abspath), arch=str((den.config or {}).get("arch", "")),
                    sigma=", ".join(f"{float(v):g}" for v in trained) or None, params=_param_count(den.model),
                    source=den.source)
    except Exception:  # noqa: BLE001 - as above
        return dict(kind="refused", error=classifier_error)


class Catalog:
    """Checkpoints under `model_dirs` (relative to `root`), the upload folder among them."""

    def __init__(self, root: str, model_dirs, upload_dir: str, given_path: str | None = None):
        self.root = os.path.abspath(root)
        self.model_dirs = [os.path.join(self.root, d) for d in model_dirs]
        self.upload_dir = os.path.join(self.root, upload_dir)
        self.given_path = os.path.join(self.root, given_path) if given_path else None
        self._cache = {}     # abspath -> ((size, mtime_ns, given), fields)
        self._lock = threading.Lock()

    # ---- architectures given by the user for files that do not say
    def given(self) -> dict:
        """{relative path: {"arch": ..., "dataset": ...}} from models.json."""
        if not self.given_path:
            return {}
        try:
            with open(self.given_path) as f:
                out = json.load(f)
            return out if isinstance(out, dict) else {}
        except (OSError, ValueError):
            return {}

    def give(self, rel: str, arch: str, dataset: str) -> ModelEntry:
        """Describe the file `rel` as `arch` on `dataset` (checked by loading it so), and remember that."""
        abspath = os.path.join(self.root, rel)
        fields = describe_checkpoint(abspath, rel, arch, dataset)
        if fields["kind"] != "classifier":
            raise CertifyNetError(fields.get("error") or f"'{rel}' is not a classifier checkpoint")
        given = {**self.given(), rel: {"arch": arch, "dataset": dataset}}
        atomic_write(self.given_path, lambda f: json.dump(given, f, indent=1))
        return self.entry(abspath)

    def rel(self, abspath: str) -> str:
        return os.path.relpath(abspath, self.root)

    def _files(self):
        from certifynet.denoise.diffusion import is_diffusers_folder, is_diffusion_source
        seen = set()
        for top in [*self.model_dirs, self.upload_dir]:
            for folder, dirs, names in os.walk(top):
                # job folders hold no checkpoints: skip them; a diffusers folder is one model (not walked into)
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not JOB_ID.match(d))
                for d in [d for d in dirs if is_diffusers_folder(os.path.join(folder, d))]:
                    dirs.remove(d)
                    if os.path.realpath(os.path.join(folder, d)) not in seen:
                        seen.add(os.path.realpath(os.path.join(folder, d)))
                        yield os.path.join(folder, d)
                for name in sorted(names):
                    path = os.path.realpath(os.path.join(folder, name))
                    listed = is_checkpoint_name(name) or (name.lower().endswith(DIFFUSION_SUFFIXES)
                                                          and is_diffusion_source(path))
                    if listed and path not in seen and os.path.isfile(path):
                        seen.add(path)
                        yield os.path.join(folder, name)

    def entry(self, abspath: str) -> ModelEntry:
        """The (cached) description of one file."""
        st = os.stat(abspath)
        given = self.given().get(self.rel(abspath)) or {}
        key = (st.st_size, st.st_mtime_ns, given.get("arch"), given.get("dataset"))
        with self._lock:
            hit = self._cache.get(abspath)
        if hit is None or hit[0] != key:
            hit = (key, describe_checkpoint(abspath, self.rel(abspath), given.get("arch"), given.get("dataset")))
            with self._lock:
                self._cache[abspath] = hit
        uploaded = os.path.dirname(abspath) == self.upload_dir
        return ModelEntry(path=self.rel(abspath), size=st.st_size, uploaded=uploaded,
                          arch_given=bool(given) and hit[1]["kind"] == "classifier", **hit[1])

    def remember(self, abspath: str, fields: dict) -> None:
        """Cache a description computed elsewhere (the upload check already loaded the file)."""
        st = os.stat(abspath)
        given = self.given().get(self.rel(abspath)) or {}
        with self._lock:
            self._cache[abspath] = ((st.st_size, st.st_mtime_ns, given.get("arch"), given.get("dataset")), fields)

    def entries(self) -> list:
        out = []
        for path in self._files():
            try:
                out.append(self.entry(path))
            except OSError:   # vanished while listing
                continue
        return out

    def find(self, rel: str, kind: str):
        """The entry of kind `kind` whose relative path is `rel`, else None (form values are never trusted)."""
        return next((e for e in self.entries() if e.path == rel and e.kind == kind), None)
