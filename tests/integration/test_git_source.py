"""Git sources: a real repository made in tmp_path is cloned, checked out, built and run."""

from __future__ import annotations

import git
import pytest

from harness import PY, Stack, run
from supervisor.desired.model import Phase

OPEN: list[git.Repo] = []
APP = "import os, time\nprint('app', os.environ['SUPERVISE_VERSION'], open('built.txt').read(), flush=True)\ntime.sleep(300)\n"


def make_repo(folder, build_ok: bool = True):
    repo = git.Repo.init(folder / "remote", initial_branch="main")
    OPEN.append(repo)
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "test").set_value("user", "email", "test@example.invalid")
    (folder / "remote" / "app.py").write_text(APP)
    (folder / "remote" / "build.py").write_text(
        "open('built.txt','w').write('built')\n" if build_ok else "import sys; print('compiler says no'); sys.exit(1)\n")
    repo.index.add(["app.py", "build.py"])
    repo.index.commit("first")
    return repo


@pytest.fixture(autouse=True)
def close_repos():
    """GitPython keeps `git cat-file` helpers per Repo until closed: close ours."""
    yield
    for repo in OPEN:
        repo.close()
    OPEN.clear()


def service(ref: str = "main") -> str:
    return f"""
[services.app]
source = {{ git = "remote", ref = "{ref}" }}
build = ["{PY}", "build.py"]
command = ["{PY}", "app.py"]
"""


def test_git_source_is_checked_out_built_and_run_at_its_commit(tmp_path):
    repo = make_repo(tmp_path)
    commit = repo.head.commit.hexsha

    async def body():
        async with Stack(tmp_path) as stack:
            plan = await stack.apply(service())
            assert [a.kind.value for a in plan] == ["fetch", "build", "start"]
            await stack.until(lambda: "app " in stack.log("app"))
            line = next(l for l in stack.log("app").splitlines() if l.startswith("app "))
            version = stack.replica("app").launch.artifact.version
            assert version.startswith(commit[:12])
            assert line == f"app {version} built"
            workdir = stack.replica("app").launch.artifact.workdir
            assert workdir.name == commit[:12] and workdir.is_relative_to(tmp_path / ".supervise")

    run(body())


def test_tag_and_commit_refs(tmp_path):
    repo = make_repo(tmp_path)
    first = repo.head.commit.hexsha
    repo.create_tag("v1")
    (tmp_path / "remote" / "app.py").write_text(APP.replace("'app'", "'app2'"))
    repo.index.add(["app.py"])
    repo.index.commit("second")

    async def body():
        for ref in ("v1", first):
            async with Stack(tmp_path / ref) as stack:
                text = service(ref).replace('git = "remote"', f'git = "{tmp_path / "remote"}"')
                await stack.apply(text)
                await stack.until(lambda: "app " in stack.log("app"))
                assert stack.replica("app").launch.artifact.version.startswith(first[:12])

    for ref in ("v1", first):
        (tmp_path / ref).mkdir()
    run(body())


def test_failed_build_starts_nothing_and_reports_the_output(tmp_path):
    make_repo(tmp_path, build_ok=False)

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(service())
            failed = stack.of_type("build-failed", "app")
            assert failed and failed[0].data["tail"] == ["compiler says no"]
            assert stack.r.controllers["app"].phase is Phase.BUILD_FAILED
            assert stack.pid("app") is None and not stack.of_type("started")
            # the same spec again does not rebuild in a loop
            assert list(await stack.apply(service())) == []

    run(body())


def test_unreachable_remote_is_a_clear_error(tmp_path):
    text = service().replace('git = "remote"', 'git = "https://user:secret@127.0.0.1:9/none.git"')

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(text)
            failed = stack.of_type("fetch-failed", "app")
            assert failed and "cannot fetch" in failed[0].data["error"]
            assert "secret" not in failed[0].data["error"]

    run(body())


def test_a_failed_fetch_is_retried_with_backoff_until_it_succeeds(tmp_path):
    """A fetch is a transient failure: requeued with backoff (the reconcile loop runs, nothing
    else wakes it), unlike a failed build, which waits for a new revision."""
    import asyncio

    from supervisor.desired.model import Backoff

    OPEN.append(git.Repo.init(tmp_path / "remote", initial_branch="main"))  # no commit yet: no "main"

    async def body():
        async with Stack(tmp_path) as stack:
            await stack.apply(service())
            assert stack.of_type("fetch-failed", "app") and stack.pid("app") is None
            stack.r.retry = Backoff(initial=0.05, max=0.2)
            stack.r._requeue("app")  # the first retry at the test's pace
            first = stack.r._requeued["app"][0]
            runner = asyncio.ensure_future(stack.r.run(lambda: asyncio.sleep(0, stack.load(service()))))
            try:
                # a retry failed and was requeued again, quietly: one fetch-failed event per outage
                await stack.until(lambda: stack.r._requeued.get("app", (0, None))[0] > first, message="a retry")
                assert len(stack.of_type("fetch-failed", "app")) == 1
                make_repo(tmp_path)
                await stack.until(lambda: stack.pid("app"), timeout=20, message="the retried fetch deployed")
            finally:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    run(body())
