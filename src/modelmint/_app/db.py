"""The app's metadata: projects, data items and training jobs (SQLAlchemy 2; Alembic migrates).

Files live on disk under the data dir; the database only says what they are: an item's label
and split, a job's state, which version of a project is deployed. SQLite by default, PostgreSQL
by URL — the same models and migrations serve both.

Ids name folders (``projects/<id>``, ``jobs/<id>``) and URLs, and a project's slug names its
models, so none is ever given out twice: SQLite tables are AUTOINCREMENT (PostgreSQL sequences
never go back), and a deleted project's slug is kept in ``retired_slugs``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import ForeignKey, Integer, String, Text, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Base(DeclarativeBase):
    pass


_NO_REUSE = {"sqlite_autoincrement": True}  # SQLite would hand out a deleted largest id again


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = _NO_REUSE
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(64), unique=True)  # the model name when served
    task: Mapped[str] = mapped_column(String(16))  # image / sound / text
    # classification / detection (boxes on images: the task is then "image")
    kind: Mapped[str] = mapped_column(String(16), default="classification",
                                      server_default="classification")
    created: Mapped[str] = mapped_column(String(32), default=utcnow)
    data_revision: Mapped[int] = mapped_column(Integer, default=0)  # bumps on every data change
    deployed_version: Mapped[int | None] = mapped_column(Integer, nullable=True)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "slug": self.slug, "task": self.task,
                "kind": self.kind, "created": self.created, "data_revision": self.data_revision,
                "deployed_version": self.deployed_version}


class Item(Base):
    """One uploaded file (an image, a wav, a text); ``label`` None means unlabeled. In a
    detection project ``label`` stays None and ``boxes`` counts the image's boxes (None: not
    labelled yet; 0: labelled, nothing in it)."""

    __tablename__ = "items"
    __table_args__ = _NO_REUSE
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"),
                                            index=True)
    original: Mapped[str] = mapped_column(Text)  # path inside the upload, for people
    suffix: Mapped[str] = mapped_column(String(16))  # stored as <project>/files/<id><suffix>
    label: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    split: Mapped[str | None] = mapped_column(String(8), nullable=True)  # train / val / None
    size: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[str] = mapped_column(String(32), default=utcnow)
    boxes: Mapped[int | None] = mapped_column(Integer, nullable=True)

    @property
    def stored_name(self) -> str:
        return f"{self.id}{self.suffix}"

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "original": self.original, "label": self.label,
                "split": self.split, "size": self.size, "boxes": self.boxes,
                "url": f"/api/projects/{self.project_id}/items/{self.id}/file"}


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = _NO_REUSE
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"),
                                            index=True)
    # running / succeeded / failed / interrupted
    status: Mapped[str] = mapped_column(String(16), default="running")
    budget: Mapped[float] = mapped_column()
    max_trials: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: budget only
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)  # 1 + resumes
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # published version
    val_accuracy: Mapped[float | None] = mapped_column(nullable=True)
    map50: Mapped[float | None] = mapped_column(nullable=True)  # a detector's val mAP@0.5
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[str] = mapped_column(String(32), default=utcnow)
    finished: Mapped[str | None] = mapped_column(String(32), nullable=True)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "project_id": self.project_id, "status": self.status,
                "budget": self.budget, "max_trials": self.max_trials,
                "attempts": self.attempts, "pid": self.pid,
                "version": self.version,
                "val_accuracy": self.val_accuracy, "map50": self.map50, "error": self.error,
                "created": self.created, "finished": self.finished}


class RetiredSlug(Base):
    """The slug of a deleted project: no new project gets it (nor its models)."""

    __tablename__ = "retired_slugs"
    slug: Mapped[str] = mapped_column(String(64), primary_key=True)
    retired: Mapped[str] = mapped_column(String(32), default=utcnow)


def make_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: object, _record: object) -> None:
            cursor = conn.cursor()  # type: ignore[attr-defined]
            cursor.execute("PRAGMA foreign_keys=ON")  # ON DELETE CASCADE needs it
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the job monitor
            cursor.close()
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (creates it on an empty database)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.connect() as conn:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            # SQLite alters a table by copying it and dropping the old one; with foreign keys
            # on, dropping "projects" would cascade-delete every item and job. The pragma only
            # takes effect outside a transaction, so before the migration's.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def session_factory(engine: Engine) -> sessionmaker:  # type: ignore[type-arg]
    return sessionmaker(engine, expire_on_commit=False)
