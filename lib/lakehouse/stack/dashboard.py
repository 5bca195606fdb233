"""The Panel dashboard server: the KPI, quality and models apps, with the DAG's reports beside them."""

from __future__ import annotations

from lakehouse.config import Settings
from lakehouse.stack.java import venv_program
from lakehouse.stack.supervisor import Service
from lakehouse.stack.web import http_ok, panel_bind_args


def recipe(settings: Settings) -> Service:
    """``panel serve dashboards/kpis.py dashboards/quality.py dashboards/models.py`` on loopback."""
    s = settings
    port = s.dashboard.port

    def make_report_dirs() -> None:
        for folder in ("profiles", "data_docs", "ml"):
            (s.reports / folder).mkdir(parents=True, exist_ok=True)

    return Service(
        name="dashboard",
        port=port,
        url=f"http://127.0.0.1:{port}/kpis",
        command=[
            venv_program("panel"),
            "serve",
            str(s.root / "dashboards" / "kpis.py"),
            str(s.root / "dashboards" / "quality.py"),
            str(s.root / "dashboards" / "models.py"),
            # The DAG's document products, browsable next to the apps.
            "--static-dirs",
            f"profiles={s.reports / 'profiles'}",
            f"data-docs={s.reports / 'data_docs'}",
            f"ml-reports={s.reports / 'ml'}",
            *panel_bind_args(port),
            "--num-procs",
            "1",
            "--liveness",
        ],
        # The liveness endpoint answers without rendering a page (a first render reads gold).
        health=lambda: http_ok(f"http://127.0.0.1:{port}/liveness"),
        env={"LAKEHOUSE_ENV": s.env_name, "LAKEHOUSE_ROOT": str(s.root)},
        prepare=make_report_dirs,
        startup_timeout=60,
        cwd=s.root,
    )
