"""The local Spark Connect server (Spark 4.2 with Delta 4.4) that notebooks, the CLI and tests attach to."""

from __future__ import annotations

import sys

from lakehouse.config import Settings
from lakehouse.errors import ServiceError
from lakehouse.spark import connect_endpoint, spark_conf
from lakehouse.stack.java import venv_program
from lakehouse.stack.supervisor import Service


def recipe(settings: Settings) -> Service:
    """``spark-submit --class SparkConnectServer`` with the one Spark configuration (:func:`spark_conf`)."""
    s = settings
    host, port = connect_endpoint(s.spark.connect_url or f"sc://127.0.0.1:{s.spark.connect_port}")
    conf = spark_conf(s)
    conf.update(
        {
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(port),
            "spark.ui.port": str(port + 2038),  # 15002 -> 17040: clear of other local Spark UIs
        }
    )
    command = [
        venv_program("spark-submit"),
        "--class",
        "org.apache.spark.sql.connect.service.SparkConnectServer",
        "--name",
        f"lakehouse-connect-{s.env_name}",
        "--master",
        s.spark.master,
        "--driver-memory",
        s.spark.driver_memory,
    ]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    command.append("spark-internal")

    def health() -> None:
        from pyspark.sql import SparkSession

        session = SparkSession.builder.remote(f"sc://{host}:{port}").create()
        try:
            if session.range(1).count() != 1:
                raise ServiceError("Spark Connect answered a wrong count")
        finally:
            session.stop()

    return Service(
        name="spark",
        port=port,
        url=f"sc://{host}:{port}",
        command=command,
        health=health,
        prepare=lambda: (s.workspace / "warehouse").mkdir(parents=True, exist_ok=True),
        env={
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "LAKEHOUSE_ENV": s.env_name,
            "LAKEHOUSE_ROOT": str(s.root),
        },
        startup_timeout=180,
        cwd=s.workspace,
    )
