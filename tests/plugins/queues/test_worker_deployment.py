"""Preparing a deployment: git clone or fetch at a branch, a venv, the requirements, and
the task process's command and environment (local repositories, no network)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from courtyard_queues.worker.deployment import (
    REQUIREMENTS_MARK,
    DeploymentError,
    prepare,
    queue_folder,
    redact,
    startup_argv,
    task_environment,
)
from courtyard_queues.worker.messages import DeploymentSpec
from worker_kit import commit, git, make_repo, python, runqy_module


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installs come from uv's cache: no test touches the network."""
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("PIP_NO_INDEX", "1")


def spec(repo: Path, **extra: str) -> DeploymentSpec:
    values = {"branch": "main", "requirements_file": "requirements.txt", **extra}
    return DeploymentSpec(
        git_url=str(repo),
        branch=values["branch"],
        startup_cmd="python tasks.py",
        requirements_file=values["requirements_file"],
        code_path=values.get("code_path", ""),
    )


async def test_clone_at_a_branch_with_a_venv_and_requirements(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_repo(source, {"tasks.py": "print('main')\n", "requirements.txt": ""})
    git("checkout", "--quiet", "-b", "gpu", cwd=source)
    wanted = commit(
        source,
        {"tasks.py": runqy_module(), "requirements.txt": "runqy-python\n"},
        "gpu version",
    )
    git("checkout", "--quiet", "main", cwd=source)

    deployment = await prepare(
        spec(source, branch="gpu"), tmp_path / "work", "inference.high", python=python()
    )
    assert deployment.commit == wanted
    assert deployment.repo == (tmp_path / "work" / "inference" / "repo").resolve()
    assert deployment.code == deployment.repo
    assert (deployment.code / "tasks.py").read_text() == runqy_module()
    assert deployment.python.exists()
    done = subprocess.run(
        [str(deployment.python), "-c", "import runqy_python, sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(done.stdout.strip()) == deployment.venv  # installed into the venv itself
    assert (deployment.venv / REQUIREMENTS_MARK).exists()


async def test_a_second_prepare_fetches_the_new_commit_and_skips_the_install(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    make_repo(source, {"tasks.py": "v1\n", "requirements.txt": "runqy-python\n"})
    work = tmp_path / "work"
    first = await prepare(spec(source), work, "q", python=python())
    mark = first.venv / REQUIREMENTS_MARK
    installed_at = mark.stat().st_mtime_ns
    (first.repo / "scratch.txt").write_text("left by a task")
    (first.repo / "tasks.py").write_text("edited in place")

    newer = commit(source, {"tasks.py": "v2\n"}, "v2")
    second = await prepare(spec(source), work, "q", python=python())
    assert second.commit == newer
    assert (second.repo / "tasks.py").read_text() == "v2\n"
    assert not (second.repo / "scratch.txt").exists()
    assert mark.stat().st_mtime_ns == installed_at  # same requirements: no new install

    commit(source, {"requirements.txt": "runqy-python\n# changed\n"}, "requirements")
    await prepare(spec(source), work, "q", python=python())
    assert mark.stat().st_mtime_ns != installed_at


async def test_a_moved_repository_is_cloned_afresh(tmp_path: Path) -> None:
    first_source, second_source = tmp_path / "one", tmp_path / "two"
    make_repo(first_source, {"tasks.py": "one\n"})
    wanted = make_repo(second_source, {"tasks.py": "two\n"})
    work = tmp_path / "work"
    await prepare(spec(first_source, requirements_file=""), work, "q", python=python())
    deployment = await prepare(
        spec(second_source, requirements_file=""), work, "q", python=python()
    )
    assert deployment.commit == wanted
    assert (deployment.repo / "tasks.py").read_text() == "two\n"
    assert not [p for p in (work / "q").iterdir() if p.name.startswith(".repo")]


async def test_a_missing_branch_is_a_clear_error(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_repo(source, {"tasks.py": ""})
    with pytest.raises(DeploymentError, match=r"git clone of .* at nope failed") as caught:
        await prepare(spec(source, branch="nope"), tmp_path / "work", "q", python=python())
    assert "nope" in str(caught.value)
    assert not (tmp_path / "work" / "q" / "repo").exists()
    assert not [p for p in (tmp_path / "work" / "q").iterdir() if p.name.startswith(".repo")]


async def test_a_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="git clone"):
        await prepare(spec(tmp_path / "nowhere"), tmp_path / "work", "q", python=python())


async def test_a_failing_install_is_reported_and_retried_next_time(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_repo(source, {"requirements.txt": "courtyard-no-such-package-anywhere==1.0\n"})
    with pytest.raises(DeploymentError, match=r"installing requirements\.txt failed"):
        await prepare(spec(source), tmp_path / "work", "q", python=python())
    commit(source, {"requirements.txt": ""}, "fixed")
    deployment = await prepare(spec(source), tmp_path / "work", "q", python=python())
    assert (deployment.venv / REQUIREMENTS_MARK).exists()


async def test_a_missing_requirements_file_installs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "source"
    make_repo(source, {"tasks.py": ""})
    deployment = await prepare(spec(source), tmp_path / "work", "q", python=python())
    assert not (deployment.venv / REQUIREMENTS_MARK).exists()
    assert "no requirements.txt in the repository" in caplog.text


@pytest.mark.slow  # a long multi-process run: CI's `pytest -m slow` step
async def test_pip_installs_when_asked(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_repo(source, {"requirements.txt": "# nothing yet\n"})
    deployment = await prepare(
        spec(source), tmp_path / "work", "q", installer="pip", python=python()
    )
    assert (deployment.venv / REQUIREMENTS_MARK).exists()
    done = subprocess.run([str(deployment.python), "-m", "pip", "--version"], capture_output=True)
    assert done.returncode == 0


async def test_code_path_and_requirements_stay_inside_the_repository(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_repo(source, {"tasks/run.py": "", "tasks/requirements.txt": ""})
    deployment = await prepare(
        spec(source, code_path="tasks"), tmp_path / "work", "q", python=python()
    )
    assert deployment.code == deployment.repo / "tasks"
    with pytest.raises(DeploymentError, match=r"code_path '\.\./\.\.' leads outside"):
        await prepare(spec(source, code_path="../.."), tmp_path / "work", "q", python=python())
    with pytest.raises(DeploymentError, match="requirements_file '/etc/passwd' leads outside"):
        await prepare(
            spec(source, requirements_file="/etc/passwd"), tmp_path / "work", "q", python=python()
        )


def test_queue_folders() -> None:
    assert queue_folder("inference.high") == "inference"
    assert queue_folder("inference") == "inference"
    assert queue_folder("a/b") == "a_b"
    assert queue_folder("..") == "_.."  # never a path of its own


async def test_environment_and_command(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_repo(source, {"tasks.py": ""})
    deployment = await prepare(spec(source), tmp_path / "work", "q", python=python())
    base = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "RUNQY_API_KEY": "secret-key",
        "COURTYARD_API_KEY": "secret-key",
        "PYTHONHOME": "/elsewhere",
    }
    env = task_environment(
        deployment, {"OPENAI_API_KEY": "sk-1", "BAD NAME": "x", "HOME": "/vault"}, base
    )
    assert env["OPENAI_API_KEY"] == "sk-1"
    assert "BAD NAME" not in env
    assert env["HOME"] == "/vault"  # a vault value wins: the operator asked for it
    assert "RUNQY_API_KEY" not in env and "COURTYARD_API_KEY" not in env
    assert "PYTHONHOME" not in env
    assert env["PATH"] == f"{deployment.bin}{os.pathsep}/usr/bin"
    assert env["VIRTUAL_ENV"] == str(deployment.venv)

    assert startup_argv("python tasks.py --model 'big one'", deployment) == [
        str(deployment.python),
        "tasks.py",
        "--model",
        "big one",
    ]
    assert startup_argv("./run.sh", deployment) == ["./run.sh"]
    with pytest.raises(DeploymentError, match="cannot be parsed"):
        startup_argv("python 'unclosed", deployment)


async def test_credentials_in_the_git_url_never_show(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from courtyard.testing import free_port

    url = f"http://deploy:s3cret-token@127.0.0.1:{free_port()}/tasks.git"
    secret = DeploymentSpec(git_url=url, branch="main", startup_cmd="python tasks.py")
    with pytest.raises(DeploymentError) as caught:
        await prepare(secret, tmp_path / "work", "q", python=python())
    assert "s3cret-token" not in str(caught.value) and "***@127.0.0.1" in str(caught.value)
    assert "s3cret-token" not in caplog.text
    assert redact("https://user:pw@host/x.git") == "https://***@host/x.git"
    assert redact("git@host:org/x.git") == "git@host:org/x.git"  # ssh: no secret in it


async def test_a_venv_follows_the_python_it_is_made_from(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_repo(source, {"requirements.txt": ""})
    first = await prepare(spec(source), tmp_path / "work", "q", python=python())
    marker = first.venv / "left-by-the-first"
    marker.write_text("")
    await prepare(spec(source), tmp_path / "work", "q", python=python())
    assert marker.exists()  # same Python: the venv is kept
    other = os.path.realpath(python())  # the same interpreter, named differently
    assert other != python()
    await prepare(spec(source), tmp_path / "work", "q", python=other)
    assert not marker.exists()  # made anew
