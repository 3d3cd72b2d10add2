"""Apache Airflow DAG: the edgewatch pipeline every three days (docs/pipeline.md).

The same steps the cron job and the systemd timer run, for users who schedule
with Airflow: analyse what the fleet recorded (Isolation Forest + K-means
report) and retrain on recent telemetry, approving only a better model and
deploying it over the air. Each task calls the ``edgewatch`` command, so the
DAG holds no pipeline logic of its own and runs on any Airflow worker that has
edgewatch installed.

Copy this file into Airflow's ``dags/`` folder. As the systemd units and the cron
job: code in ``/opt/edgewatch``, state (registry, runs) in ``/var/lib/edgewatch``,
settings read by edgewatch itself from ``/etc/edgewatch/edgewatch.env``
(EDGEWATCH_DB_URL, EDGEWATCH_MQTT_URL, MQTT_USERNAME, MQTT_PASSWORD,
EDGEWATCH_OTA_KEY; never put secrets here). Airflow's ``timedelta(days=3)`` is an
exact three days; ``--every 3`` keeps a manual or retried run from retraining twice.
Works with Airflow 3 (``airflow.sdk``) and Airflow 2.7+.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.operators.bash import BashOperator

HOME = os.environ.get("EDGEWATCH_HOME", "/opt/edgewatch")
EDGEWATCH = os.environ.get("EDGEWATCH_BIN", f"{HOME}/.venv/bin/edgewatch")
STATE = os.environ.get("EDGEWATCH_STATE", "/var/lib/edgewatch")
ENV_FILE = os.environ.get("EDGEWATCH_ENV_FILE", "/etc/edgewatch/edgewatch.env")

# One shell command per task; `{{ ds }}` is Airflow's run date, so each run's
# report lands in its own folder.
COMMANDS = {
    "analyze": (f'cd "{STATE}" && "{EDGEWATCH}" analyze --env-file "{ENV_FILE}" '
                "--contamination 0.05 --clusters 4 --out runs/analyze/{{ ds }}"),
    "retrain": (f'cd "{STATE}" && "{EDGEWATCH}" retrain --env-file "{ENV_FILE}" '
                "--registry models/registry --work runs/retrain --every 3 --publish --wait-s 120"),
}

with DAG(
    dag_id="edgewatch_pipeline",
    description="Analyse the fleet's telemetry, retrain, approve and deploy the anomaly model",
    schedule=timedelta(days=3),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
    tags=["edgewatch", "iot", "anomaly-detection"],
) as dag:
    analyze = BashOperator(task_id="analyze", bash_command=COMMANDS["analyze"],
                           execution_timeout=timedelta(hours=1))
    retrain = BashOperator(task_id="retrain", bash_command=COMMANDS["retrain"],
                           execution_timeout=timedelta(hours=2))
    # The report first: a retrain that then fails still leaves the analysis to read.
    analyze >> retrain
