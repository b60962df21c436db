"""The web app's views: one Flask blueprint per area, registered by `certifynet.web.app.create_app`.

- `models`: the models page (list, upload, architecture of a file that does not say it, delete) and home;
- `certify`: the certify form, its submission (a job: one method or a group on shared counts) and the quick
  answer on the model's warm worker;
- `jobs`: the job list, a job's page (its results, explained), live status, cancel/resume/delete and its files;
- `compare`: any jobs side by side (radii of single images; overlaid curves and one table of batches);
- `attack`: an audit of a finished job's certificates, or a batch's empirical robust accuracy (new jobs);
- `media`: images (gallery thumbnails, a job's input and noisy copies, the input preview) and the favicon;
- `api`: the JSON API (`/api/jobs`, `/api/jobs/<id>`, `/api/estimate`).

Views share the app's `WebState` through ``current_app.extensions["certifynet"]`` (`common.state`).
"""
from __future__ import annotations

from certifynet.web.views import api, attack, certify, compare, jobs, media, models

BLUEPRINTS = (models.bp, certify.bp, jobs.bp, compare.bp, attack.bp, media.bp, api.bp)

__all__ = ["BLUEPRINTS"]
