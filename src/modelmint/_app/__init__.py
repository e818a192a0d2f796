"""``mint app``: the web app — projects, data and labels, training jobs, evaluation, deployment.

Modules: ``settings`` (every option), ``db`` + ``migrations/`` (SQLAlchemy models, Alembic),
``uploads`` (streaming, zip safety), ``dataset`` (snapshots, data check), ``jobs`` (`mint train`
subprocesses), ``serving`` (the owned `mint serve`), ``children`` (child processes that die with
the app, recorded), ``sdk`` (offline SDK zip), ``api_*`` (REST), ``pages`` + ``templates/`` +
``static/`` (the UI), ``edge`` (Host allowlist, security headers), ``auth`` (token, CSRF),
``main`` (assembly).
"""

from .main import create_app, run_app
from .settings import AppSettings

__all__ = ["AppSettings", "create_app", "run_app"]
