"""`ray job submit` of the whole pipeline to a real Ray head with token auth, on tiny phantoms;
then the re-run that skips done work, and the report in a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from ..conftest import _free_port, ray_head_command, stop_processes_naming

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.timeout(1200)


def job_status(head: dict, job_id: str) -> str:
    """SUCCEEDED, FAILED, ... as `ray job status` tells it for a finished job."""
    text = _ray(head, "job", "status", "--address", head["address"], job_id)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text.stdout + text.stderr)
    found = re.search(rf"Job '{re.escape(job_id)}' (\w+)", plain)
    return found.group(1).upper() if found else plain


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with token auth, started with `ray start --head`, stopped after."""
    temp_dir = tempfile.mkdtemp(prefix="srh", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    dashboard = _free_port()
    cmd = ray_head_command(temp_dir, "--node-ip-address=127.0.0.1", "--port=0", "--num-cpus=2")
    cmd += [
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={_free_port()}",
    ]
    cmd += [f"--dashboard-agent-grpc-port={_free_port()}"]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"env": env, "address": f"http://127.0.0.1:{dashboard}", "temp_dir": temp_dir}
    finally:
        stop_processes_naming(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray(head: dict, *args: str, env: dict | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), *args], cwd=ROOT, env=env or head["env"], capture_output=True, text=True, timeout=timeout
    )


# tiny phantoms and budgets: the point is the plumbing, not the models
JOB_ARGS = ["--patients", "6", "--samples", "1", "--max-epochs", "1", "--input-size", "64", "--no-preview"]


@pytest.fixture(scope="module")
def pipeline_job(ray_head, tmp_path_factory):
    """jobs/pipeline.py submitted with the project's runtime env; (run folder, job status text, logs)."""
    out = tmp_path_factory.mktemp("job") / "run"
    job_id = f"strokeray-test-{secrets.token_hex(4)}"
    submit = _ray(
        ray_head,
        "job",
        "submit",
        "--address",
        ray_head["address"],
        "--submission-id",
        job_id,
        "--runtime-env",
        "jobs/runtime_env.yaml",
        "--working-dir",
        ".",
        "--",
        "python",
        "jobs/pipeline.py",
        "--out",
        str(out),
        *JOB_ARGS,
        timeout=1000,
    )
    status = job_status(ray_head, job_id)
    logs = _ray(ray_head, "job", "logs", "--address", ray_head["address"], job_id).stdout
    return out, status, logs, submit


def test_token_auth_is_on(ray_head):
    wrong = {**ray_head["env"], "RAY_AUTH_TOKEN": "0" * 64}
    wrong.pop("RAY_AUTH_TOKEN_PATH")
    refused = _ray(ray_head, "job", "list", "--address", ray_head["address"], env=wrong)
    assert refused.returncode != 0, refused.stdout
    allowed = _ray(ray_head, "job", "list", "--address", ray_head["address"])
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_submitted_pipeline_succeeds_and_leaves_every_output(pipeline_job):
    out, status, logs, submit = pipeline_job
    assert status == "SUCCEEDED", (
        f"{status}\n--- submit ---\n{submit.stdout[-3000:]}{submit.stderr[-3000:]}\n--- logs ---\n{logs[-6000:]}"
    )
    assert submit.returncode == 0
    card = json.loads((out / "shards" / "card.json").read_text())
    assert card["slices"] >= 36 and card["quarantined"] > 0  # 6 phantoms x 6 slices (+ planted odd ones); bad files
    for task in ("classify", "segment"):
        pointer = json.loads((out / "registry" / task / "current.json").read_text())
        assert (out / "registry" / task / pointer["version"] / "model.safetensors").is_file()
        evaluation = json.loads((out / "evaluation" / f"{task}.json").read_text())
        assert evaluation["split"] == "test" and evaluation["slices"] > 0
        assert (out / "evaluation" / f"{task}-predictions.parquet").is_file()
    summary = json.loads((out / "score" / "summary.json").read_text())
    assert summary["slices"] == card["slices"] and summary["quarantined"] == card["quarantined"]
    page = (out / "report" / "index.html").read_text()
    figures = sorted(p.name for p in (out / "report" / "figures").glob("*.png"))
    assert {
        "classify-training.png",
        "classify-confusion.png",
        "segment-training.png",
        "segment-classes.png",
        "score-probabilities.png",
    } <= set(figures)
    assert page.count("data:image/png;base64,") == len(figures)
    assert "[pipeline] done" in logs


def test_a_failing_job_exits_nonzero_and_its_logs_say_why(ray_head, tmp_path):
    job_id = f"strokeray-fail-{secrets.token_hex(4)}"
    missing = tmp_path / "no-such-archive"
    submit = _ray(
        ray_head,
        "job",
        "submit",
        "--address",
        ray_head["address"],
        "--submission-id",
        job_id,
        "--runtime-env",
        "jobs/runtime_env.yaml",
        "--working-dir",
        ".",
        "--",
        "python",
        "jobs/ingest.py",
        str(missing),
        str(tmp_path / "out"),
        timeout=600,
    )
    assert submit.returncode != 0
    assert job_status(ray_head, job_id) == "FAILED"
    logs = _ray(ray_head, "job", "logs", "--address", ray_head["address"], job_id).stdout
    assert "no-such-archive" in logs


def test_runtime_env_installs_the_projects_dependencies():
    """jobs/runtime_env.yaml lists pyproject's dependencies (ray excepted: the cluster's) and the s3 extra."""
    import tomllib

    from ray.runtime_env import RuntimeEnv

    doc = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())
    RuntimeEnv(**doc)  # Ray's own validation of the fields
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = [d for d in project["dependencies"] if not d.startswith("ray")] + project["optional-dependencies"]["s3"]
    assert doc["pip"]["packages"] == expected
    assert doc["working_dir"] == "." and ".venv" in doc["excludes"]


def test_rerun_skips_every_finished_stage(pipeline_job, ray_local):
    from strokeray.cli import build_parser, pipeline_config
    from strokeray.stages.pipeline import run_pipeline

    out, status, _, _ = pipeline_job
    assert status == "SUCCEEDED"
    kept = [
        *(out / "registry").rglob("model.safetensors"),
        out / "score" / "slices.parquet",
        out / "evaluation" / "classify.json",
        out / "evaluation" / "segment-predictions.parquet",
        *(out / "shards" / "shards").glob("*.parquet"),
    ]
    before = {p: p.stat().st_mtime_ns for p in kept}
    lines: list[str] = []
    result = run_pipeline(
        pipeline_config(build_parser().parse_args(["pipeline", "--out", str(out), *JOB_ARGS])), log=lines.append
    )
    text = "\n".join(lines)
    assert result.archive_reused and "[synth] reusing" in text
    assert text.count("finished earlier") == 2 and text.count("[evaluate]") == 2 and "nothing to do" in text
    assert result.ingest.chunks_skipped == 1 and result.ingest.chunks_done == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == before  # nothing finished was rewritten
    assert result.report and Path(result.report).is_file()


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """Debian's headless Chromium driven through its ChromeDriver (selenium)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        message = "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def open_page(browser, path: Path) -> tuple[list[dict], list[dict]]:
    """Load ``path``; (its images with load state and natural size, console messages of level WARNING+)."""
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(path.as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
        "width: i.naturalWidth, height: i.naturalHeight}))"
    )
    console = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    return images, console


def test_the_browser_check_catches_broken_images_and_console_errors(chromium, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><body><img src="missing.png" alt="x">'
        "<script>console.error('boom')</script></body></html>"
    )
    images, console = open_page(chromium, bad)
    assert images and images[0]["width"] == 0
    assert any("boom" in e["message"] for e in console) and any("missing.png" in e["message"] for e in console)


def test_report_shows_every_figure_in_chromium_without_console_errors(pipeline_job, chromium):
    from selenium.webdriver.common.by import By

    out = pipeline_job[0]
    page = out / "report" / "index.html"
    images, console = open_page(chromium, page)
    assert console == []
    figures = list((out / "report" / "figures").glob("*.png"))
    assert len(images) == len(figures) >= 7  # ROC and examples need both classes in the tiny test split
    for image in images:
        assert image["complete"] and image["width"] > 200 and image["height"] > 150, image
    titles = [h.text for h in chromium.find_elements(By.CSS_SELECTOR, "section h2")]
    assert titles == [
        "Data",
        "Classifier: training",
        "Classifier: test split",
        "Classifier: model search",
        "Segmenter: training",
        "Segmenter: test split",
        "Segmenter: model search",
        "Scoring the archive",
    ]
    assert chromium.find_elements(By.CSS_SELECTOR, ".missing") == []
