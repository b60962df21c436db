"""The web app's views: one Flask blueprint per area, registered by `certifynet.web.app.create_app`.

- `models`: the models page (list, upload) and the home redirect;
- `certify`: the certify form and its submission (a queued job);
- `jobs`: the job list, a job's page, its live status, cancel/resume and its files;
- `media`: images (gallery thumbnails, a job's input and noisy copies) and the favicon.

Views share the app's `WebState` through ``current_app.extensions["certifynet"]`` (`common.state`).
"""
from __future__ import annotations

from certifynet.web.views import certify, jobs, media, models

BLUEPRINTS = (models.bp, certify.bp, jobs.bp, media.bp)

__all__ = ["BLUEPRINTS"]
