"""``init``, the missing-file message, shell completion (sourced in a real bash) and ``exec``,
through the real CLI."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import terminate, wait_until, write

PY = sys.executable
BIN = Path(PY).parent


def supervise(*args: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "supervisor", *args], capture_output=True, text=True, timeout=60, cwd=cwd, **kw)


def need(*tools: str) -> list[str]:
    """The paths of ``tools``; without one of them the test skips here, and fails under CI
    (``.ci/run`` installs them)."""
    found = [shutil.which(tool) for tool in tools]
    missing = " and ".join(tool for tool, path in zip(tools, found) if path is None)
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} missing; .ci/run installs it")
        pytest.skip(f"{missing} not installed here (CI installs it)")
    return [path for path in found if path is not None]


class Terminal:
    """An interactive ``shell`` (its argv as one string) in a detached 200x10 tmux session on a
    tmux server of its own (``-L``), with only our PATH, HOME=``home``, TERM and the test's
    mark in its environment. Use as a context manager: the server is killed at the end."""

    def __init__(self, tmux: str, name: str, home: Path, shell: str):
        self.tmux, self.socket = tmux, f"supervise-test-{name}-{os.getpid()}-{home.name}"
        self.shell = (f"env -i PATH={BIN}:/usr/bin:/bin HOME={home} TERM=xterm "
                      f"SUPERVISE_TEST_MARK={os.environ['SUPERVISE_TEST_MARK']} {shell}")

    def __enter__(self) -> "Terminal":
        subprocess.run([self.tmux, "-L", self.socket, "-f", "/dev/null", "new-session", "-d", "-x", "200", "-y", "10",
                        self.shell], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True)

    def screen(self) -> str:
        return subprocess.run([self.tmux, "-L", self.socket, "capture-pane", "-p"], capture_output=True, text=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([self.tmux, "-L", self.socket, "send-keys", *keys], check=True)

    def expect(self, text: str, message: str) -> None:
        wait_until(lambda: text in self.screen(), timeout=20, message=message)


def test_init_writes_a_starter_that_checks_and_never_overwrites(tmp_path):
    result = supervise("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "services.toml").read_text()
    assert text.startswith("#") and "[services.web]" in text and "# depends_on" in text
    assert supervise("check", cwd=tmp_path).returncode == 0
    (tmp_path / "services.toml").write_text("# mine\n[services]\n")
    again = supervise("init", cwd=tmp_path)
    assert again.returncode == 1 and "already exists; not overwriting" in again.stderr
    assert (tmp_path / "services.toml").read_text() == "# mine\n[services]\n"


def test_init_from_a_procfile(tmp_path):
    write(tmp_path / "Procfile", "web: python3 -m http.server $PORT\nworker: python3 -c 'print(1)'\n")
    write(tmp_path / ".env", "GREETING=hi\n")
    result = supervise("init", "--config", str(tmp_path / "services.toml"))
    assert result.returncode == 0 and "from " + str(tmp_path / "Procfile") in result.stdout
    text = (tmp_path / "services.toml").read_text()
    assert "[services.web]" in text and "[services.worker]" in text and "supervise init" in text
    check = supervise("check", "--json", "--config", str(tmp_path / "services.toml"))
    assert json.loads(check.stdout)["services"] == ["web", "worker"]


def test_init_with_supervise_config_uses_the_procfile_beside_that_file(tmp_path):
    """$SUPERVISE_CONFIG names the file: the Procfile beside it is used, not one in the
    current folder, and the file is written there."""
    write(tmp_path / "here" / "Procfile", "wrong: sleep 1\n")
    write(tmp_path / "there" / "Procfile", "right: sleep 1\n")
    config = tmp_path / "there" / "services.toml"
    env = {**os.environ, "SUPERVISE_CONFIG": str(config)}
    result = supervise("init", cwd=tmp_path / "here", env=env)
    assert result.returncode == 0, result.stderr
    assert f"from {tmp_path / 'there' / 'Procfile'}" in result.stdout
    assert "[services.right]" in config.read_text() and not (tmp_path / "here" / "services.toml").exists()
    assert json.loads(supervise("check", "--json", cwd=tmp_path / "here", env=env).stdout)["services"] == ["right"]
    relative = {**os.environ, "SUPERVISE_CONFIG": "there/services.toml"}
    config.unlink()
    assert supervise("init", cwd=tmp_path, env=relative).returncode == 0
    assert "[services.right]" in config.read_text()


@pytest.mark.parametrize("verb", [["run"], ["check"], ["plan"], ["status"], ["stop", "x"], ["logs"], ["top"],
                                  ["exec", "x", "--", "true"], ["events", "--since", "1m"],
                                  ["run", "--exit-when-done"]])
def test_a_missing_config_file_says_so_in_one_line(tmp_path, verb):
    result = supervise(*verb, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "supervise: services.toml: no such file: write a starter one with `supervise init`, "
        "or name yours with --config FILE"]
    assert "Errno" not in result.stderr


def bash_complete(script: Path, line: str, cwd: Path) -> list[str]:
    """Complete ``line`` (the cursor at its end) with the sourced script in a real bash."""
    words = line.split(" ")
    program = (f"source {script}\n"
               f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
               f"COMP_CWORD={len(words) - 1}\n"
               "COMP_LINE=\"${COMP_WORDS[*]}\"; COMP_POINT=${#COMP_LINE}\n"
               "_supervise supervise\n"
               "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
                            cwd=cwd, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return [w for w in result.stdout.splitlines() if w]


def test_bash_completion_of_verbs_options_and_running_service_names(tmp_path):
    path = write(tmp_path / "services.toml", '[services.web-a]\ncommand = ["sleep", "300"]\n'
                                             '[services.web-b]\ncommand = ["sleep", "300"]\n')
    script = tmp_path / "supervise.bash"
    result = supervise("completion", "bash")
    assert result.returncode == 0
    script.write_text(result.stdout)
    assert bash_complete(script, "supervise st", tmp_path) == ["status", "start", "stop"]
    assert "--since" in bash_complete(script, "supervise logs --s", tmp_path)
    assert bash_complete(script, "supervise import --from s", tmp_path) == ["supervisord"]
    assert bash_complete(script, "supervise completion z", tmp_path) == ["zsh"]
    # no supervisor: the names in the file
    assert bash_complete(script, "supervise stop web", tmp_path) == ["web-a", "web-b"]
    # a running one: its names (a service only in the file now is not offered)
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: supervise("status", cwd=tmp_path).returncode == 0, timeout=30)
        path.write_text(path.read_text().replace("[services.web-b]", "[services.web-c]") + "\n# saved\n")
        assert supervise("completion", "--names", cwd=tmp_path).stdout.split() in (["web-a", "web-b"], ["web-a", "web-c"])
        names = bash_complete(script, f"supervise restart --config {path} we", tmp_path.parent)
        assert names[0] == "web-a" and len(names) == 2
    finally:
        terminate(proc)



def test_bash_completion_names_work_when_supervise_is_not_on_path(tmp_path):
    """The README installs into a venv that is not on PATH (``eval "$(/opt/supervise/bin/supervise
    completion bash)"``): the script runs the supervise that generated it, by absolute path."""
    write(tmp_path / "services.toml", '[services.web-a]\ncommand = ["sleep", "300"]\n'
                                      '[services.web-b]\ncommand = ["sleep", "300"]\n')
    result = subprocess.run([str(Path(BIN) / "supervise"), "completion", "bash"], capture_output=True, text=True,
                            env={**os.environ, "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
    script = write(tmp_path / "supervise.bash", result.stdout)
    words = ["supervise", "stop", "web"]
    program = (f"source {script}\nCOMP_WORDS=({' '.join(words)})\nCOMP_CWORD=2\n"
               "COMP_LINE=\"${COMP_WORDS[*]}\"; COMP_POINT=${#COMP_LINE}\n_supervise supervise\n"
               "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.stdout.split() == ["web-a", "web-b"], done.stderr


@pytest.mark.parametrize("typed, expect", [
    ("supervise --config={config} stop we", "supervise --config={config} stop web-Q"),  # names from the file
    ("supervise logs --since=10m --config={config} web-a", "supervise logs --since=10m --config={config} web-a Q"),
    ("supervise --config={folder}/serv", "supervise --config={config} Q"),  # the file itself after --config=
])
def test_bash_completion_after_option_equals_value(tmp_path, typed, expect):
    """In a real interactive bash (tmux), where readline splits ``--config=FILE`` into three
    words at "=": the names still come from FILE, and FILE itself completes."""
    [tmux] = need("tmux")
    folder = tmp_path / "project"
    config = write(folder / "services.toml", '[services.web-a]\ncommand = ["sleep", "300"]\n'
                                              '[services.web-b]\ncommand = ["sleep", "300"]\n')
    (tmp_path / "elsewhere").mkdir()
    script = write(tmp_path / "supervise.bash", supervise("completion", "bash").stdout)
    with Terminal(tmux, "bash", tmp_path, "bash --norc --noprofile -i") as terminal:
        terminal.keys(f"source {script}; cd {tmp_path / 'elsewhere'}; echo READY", "Enter")
        terminal.expect("\nREADY", "bash to source the script")
        # readline finishes the Tab before it reads the Q: Q shows where completion left the cursor
        terminal.keys(typed.format(config=config, folder=folder), "Tab", "Q")
        completed = expect.format(config=config)
        terminal.expect(completed, f"{completed!r} on screen")


def test_zsh_and_fish_scripts(tmp_path):
    zsh = supervise("completion", "zsh").stdout
    assert zsh.startswith("#compdef supervise") and "bashcompinit" in zsh and "complete -F _supervise supervise" in zsh
    fish = supervise("completion", "fish").stdout
    assert "complete -c supervise -n __fish_use_subcommand -a top" in fish
    assert "(__supervise_names)" in fish
    for shell, text in (("zsh", zsh), ("fish", fish)):
        if shutil.which(shell):  # not installed here; where it is, the script must at least parse
            flag = ["-n"] if shell == "zsh" else ["--no-execute"]
            (tmp_path / shell).write_text(text)
            assert subprocess.run([shell, *flag, str(tmp_path / shell)], capture_output=True).returncode == 0
    assert supervise("completion").returncode == 2


def test_zsh_completion_in_a_real_terminal(tmp_path):
    """The zsh script (bash's, through bashcompinit) in an interactive zsh (tmux): verbs, and
    service names from the file given with --config, not from the current folder."""
    tmux, zsh = need("tmux", "zsh")
    config = write(tmp_path / "project" / "services.toml", '[services.web-a]\ncommand = ["sleep", "300"]\n'
                                                           '[services.web-b]\ncommand = ["sleep", "300"]\n')
    write(tmp_path / "elsewhere" / "services.toml", '[services.other]\ncommand = ["sleep", "300"]\n')
    script = write(tmp_path / "supervise.zsh", supervise("completion", "zsh").stdout)
    with Terminal(tmux, "zsh", tmp_path, f"{zsh} -f -i") as terminal:
        terminal.keys(f"autoload -U +X compinit && compinit -u; source {script}; cd {tmp_path / 'elsewhere'}; echo READY",
                      "Enter")
        terminal.expect("\nREADY", "zsh to source the script")
        terminal.keys(f"supervise stop --config {config} we", "Tab", "Q")
        terminal.expect(f"supervise stop --config {config} web-Q", "the names")
        terminal.keys("C-u", "supervise rest", "Tab", "Q")
        terminal.expect("supervise restart Q", "the verb")


def fish_complete(script: Path, line: str, cwd: Path) -> list[str]:
    """What a real fish offers for ``line`` (``complete -C``) with the script sourced."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    result = subprocess.run(["fish", "--no-config", "-c", f"source {script}; complete -C {shlex.quote(line)}"],
                            capture_output=True, text=True, cwd=cwd, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return [w.split("\t")[0] for w in result.stdout.splitlines() if w]


def test_fish_completion_takes_names_from_the_supervisor_of_the_given_config(tmp_path):
    need("fish")
    write(tmp_path / "services.toml", '[services.here]\ncommand = ["sleep", "300"]\n')
    other = write(tmp_path / "other" / "services.toml", '[services.there-a]\ncommand = ["sleep", "300"]\n'
                                                        '[services.there-b]\ncommand = ["sleep", "300"]\n')
    script = tmp_path / "supervise.fish"
    script.write_text(supervise("completion", "fish").stdout)
    assert fish_complete(script, "supervise stop ", tmp_path) == ["here"]
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(other)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: supervise("status", "--config", str(other)).returncode == 0, timeout=30)
        for line in (f"supervise stop --config {other} ", f"supervise --config={other} logs ",
                     f"supervise -c {other} restart there-"):
            assert fish_complete(script, line, tmp_path) == ["there-a", "there-b"], line
    finally:
        terminate(proc)


def test_exec_runs_with_the_services_environment_folder_and_exit_code(tmp_path):
    write(tmp_path / "app" / "sub" / "marker", "")
    write(tmp_path / ".env", "FROM_FILE=file\nBOTH=file\n")
    path = write(tmp_path / "services.toml", """
[env]
GLOBAL = "g"
[services.app]
source = "./app"
cwd = "sub"
command = ["sleep", "300"]
env_file = ".env"
env = { BOTH = "service", DERIVED = "${GLOBAL}-x" }
replicas = 2
""")
    code = "import os,sys; print(os.getcwd()); print(*(os.environ.get(k) for k in sys.argv[1:])); sys.exit(5)"
    result = supervise("exec", "app", "--replica", "1", "--", PY, "-c", code, "GLOBAL", "FROM_FILE", "BOTH", "DERIVED",
                       "REPLICA", "SUPERVISE_SERVICE", "SUPERVISE_VERSION", cwd=tmp_path)
    assert result.returncode == 5, result.stderr
    assert result.stdout.splitlines() == [str(tmp_path / "app" / "sub"), "g file service g-x 1 app None"]
    assert supervise("exec", "app", "--", "no-such-command-x", cwd=tmp_path).returncode == 127
    unknown = supervise("exec", "nope", "--", "true", cwd=tmp_path)
    assert unknown.returncode == 1 and "unknown service: nope" in unknown.stderr
    misplaced = supervise("exec", "app", "--config", str(path), "--", "true", cwd=tmp_path)
    assert misplaced.returncode == 2 and "--config goes before NAME" in misplaced.stderr
    assert supervise("exec", "--config", str(path), "app", "true").returncode == 0  # no --: the rest is CMD
    signalled = supervise("exec", "app", "--", "sh", "-c", "kill -TERM $$", cwd=tmp_path)
    assert signalled.returncode == 128 + 15

    # with a version running, exec sees it (SUPERVISE_VERSION) and runs in its folder
    proc = subprocess.Popen([PY, "-m", "supervisor", "-q", "--config", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: supervise("status", cwd=tmp_path).returncode == 0, timeout=30)
        version = json.loads(supervise("status", "--json", cwd=tmp_path).stdout)["services"][0]["version"]
        got = supervise("exec", "app", "--", "printenv", "SUPERVISE_VERSION", cwd=tmp_path)
        assert got.returncode == 0 and got.stdout.strip() == version
    finally:
        terminate(proc)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root (the supervisor's user= does too)")
def test_exec_runs_as_the_services_user(tmp_path):
    nobody = pwd.getpwnam("nobody")
    os.chmod(tmp_path, 0o755)
    write(tmp_path / "services.toml", '[services.app]\ncommand = ["sleep", "300"]\nuser = "nobody"\n')
    result = supervise("exec", "app", "--", "id", "-u", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == str(nobody.pw_uid)


def test_top_and_status_watch_refuse_a_pipe_instead_of_writing_escape_codes_into_it(tmp_path):
    """``supervise status --watch | head -3`` used to fill the pipe with a full-screen view and
    never end; not on a terminal, both say so in one line and exit 2."""
    write(tmp_path / "services.toml", '[services.web-a]\ncommand = ["sleep", "300"]\n')
    for argv in (("status", "--watch"), ("top",)):
        result = subprocess.run([PY, "-m", "supervisor", *argv], capture_output=True, text=True, cwd=tmp_path,
                                stdin=subprocess.DEVNULL, timeout=60)
        assert result.returncode == 2 and result.stdout == ""
        assert "need a terminal" in result.stderr and len(result.stderr.splitlines()) == 1
