"""Installer for Certify-Net. Name and version come from src/certifynet/_version.py."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
_ver = (HERE / "src" / "certifynet" / "_version.py").read_text()
NAME = re.search(r'__package_name__ = "([^"]+)"', _ver).group(1)
VERSION = re.search(r'__version__ = "([^"]+)"', _ver).group(1)
REQUIRES = [ln.strip() for ln in (HERE / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]

SCRIPTS = ["train", "train_smoothmix", "train_denoiser", "sample", "certify", "predict",
           "analyze", "merge", "run_shards", "quickstart", "web", "attack", "train_ddpm"]

setup(
    name=NAME,
    version=VERSION,
    description="Certified robustness by randomized smoothing: NP (Cohen), DSRS, ISS, denoised smoothing",
    license="MIT",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"certifynet.web": ["templates/*.html", "static/*"]},
    python_requires=">=3.9",
    install_requires=REQUIRES,
    extras_require={"dev": ["pytest>=7", "selenium>=4.10", "hypothesis", "ruff", "sphinx>=7", "myst-parser>=2"]},
    entry_points={"console_scripts": [f"certifynet-{s.replace('_', '-')}=certifynet.cli.{s}:main" for s in SCRIPTS]},
)
