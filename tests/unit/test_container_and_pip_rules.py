"""The pure rules of container and pip sources: Docker's port and volume syntax, where the engine
is, image names, exit statuses, package-version revisions, and the config keys (located errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.desired import config
from supervisor.execute.builds import make_version
from supervisor.execute.executors.container import (
    EngineError,
    engine_url,
    exit_of,
    image_tag,
    instance_id,
    parse_port,
    parse_volume,
)
from supervisor.desired.model import ImageBuild, ServiceSpec, SourceSpec
from supervisor.decide.plan import plan, same_revision
from supervisor.execute.sources.pip import index_args, parse_requirement, venv_env


@pytest.mark.parametrize(("text", "expected"), [
    ("8080:80", ("80/tcp", 8080)),
    ("80", ("80/tcp", None)),
    ("127.0.0.1:8080:80", ("80/tcp", ("127.0.0.1", 8080))),
    ("127.0.0.1::80", ("80/tcp", ("127.0.0.1", 0))),
    ("5353:53/udp", ("53/udp", 5353)),
    ("[::1]:8080:80", ("80/tcp", ("::1", 8080))),
])
def test_ports_follow_dockers_p_syntax(text, expected):
    assert parse_port(text) == expected


@pytest.mark.parametrize("text", ["", "http", "8080:", "99999:80", "8080:0", "8080:80/xdp", "a:b:c:d"])
def test_bad_ports(text):
    with pytest.raises(ValueError):
        parse_port(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("./data:/data", ("/base/data", {"bind": "/data", "mode": "rw"})),
    ("/srv/x:/x:ro", ("/srv/x", {"bind": "/x", "mode": "ro"})),
    ("cache:/cache", ("cache", {"bind": "/cache", "mode": "rw"})),
])
def test_volumes_follow_dockers_v_syntax(text, expected):
    assert parse_volume(text, Path("/base")) == expected


@pytest.mark.parametrize("text", ["/data", "./a:relative", "./a:/b:rx", "bad name!:/x", ":/x"])
def test_bad_volumes(text):
    with pytest.raises(ValueError):
        parse_volume(text, Path("/base"))


def test_engine_is_the_setting_then_docker_host_then_the_usual_sockets():
    none = lambda path: False  # noqa: E731
    assert engine_url("unix:///a.sock", {"DOCKER_HOST": "tcp://h:2375"}, none) == "unix:///a.sock"
    assert engine_url("/b.sock", {}, none) == "unix:///b.sock"
    assert engine_url(None, {"DOCKER_HOST": "tcp://h:2375"}, none) == "tcp://h:2375"
    found = {"/run/user/7/podman/podman.sock"}
    assert engine_url(None, {"XDG_RUNTIME_DIR": "/run/user/7"}, found.__contains__) == "unix:///run/user/7/podman/podman.sock"
    with pytest.raises(EngineError) as failure:
        engine_url(None, {}, none)
    message = str(failure.value)
    assert "\n" not in message and "docker_host" in message and "/var/run/docker.sock" in message


def test_image_names_instances_and_exit_statuses():
    assert image_tag("web", "abc123-def") == "localhost/supervise-web:abc123-def"
    assert image_tag("My.Web", "1.0+local").startswith("localhost/supervise-my-web-")  # folded: hashed
    assert image_tag("My.Web", "1.0+local").endswith(":1.0_local")
    assert instance_id(Path("/a")) == instance_id(Path("/a/../a")) != instance_id(Path("/b"))
    assert exit_of(0) == (0, None) and exit_of(3) == (3, None) and exit_of(137) == (None, 9)


def test_package_versions_are_whole_revisions():
    pip = ServiceSpec(name="p", command=("x",), source=SourceSpec(kind="pip", requirement="x"))
    git = ServiceSpec(name="g", command=("x",), source=SourceSpec(kind="git", url="u"))
    assert make_version("1.0.10", pip).startswith("1.0.10-")
    assert make_version("a" * 40, git).split("-")[0] == "a" * 12
    assert not same_revision("1.0", "1.0.1")  # a package version is not a prefix of another
    assert same_revision("1.0", "1.0")
    assert same_revision("a" * 12, "a" * 40)  # an abbreviated commit still is


def test_a_new_package_version_fetches_then_restarts(tmp_path):
    (tmp_path / "services.toml").write_text('[services.p]\nsource = { pip = "x>=1" }\ncommand = ["x"]\n')
    desired = config.load(tmp_path / "services.toml")
    from supervisor.desired.model import Observed, Phase, ReplicaObserved, ServiceObserved
    spec = desired.services["p"]
    observed = Observed({"p": ServiceObserved(name="p", spec=spec, version="1.0-hash",
                                              replicas={0: ReplicaObserved(0, Phase.RUNNING, 1, "1.0-hash")})})
    assert plan(desired, observed, {"p": "1.0.1"}).lines() == [
        "fetch p: new revision 1.0 -> 1.0.1", "restart p[0]: new revision 1.0 -> 1.0.1"]
    assert plan(desired, observed, {"p": "1.0"}).lines() == []


def test_pip_helpers():
    assert parse_requirement("sv-hello[x]>=1.0").name == "sv-hello"
    for bad in ("sv hello>=", "x @ https://example.org/x.whl"):
        with pytest.raises(ValueError):
            parse_requirement(bad)
    spec = SourceSpec(kind="pip", requirement="x", index="http://i/simple", extra_index=("file:///w",))
    assert index_args(spec) == ["--index-url", "http://i/simple", "--extra-index-url", "file:///w"]
    assert venv_env(Path("/v"), {"PATH": "/usr/bin"}) == {"VIRTUAL_ENV": "/v", "PATH": "/v/bin:/usr/bin"}


def errors(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "services.toml").write_text(text)
    with pytest.raises(config.ConfigError) as failure:
        config.load(tmp_path / "services.toml")
    return [f"{d.line}: {d.message}" for d in failure.value.diagnostics]


def test_pip_source_config(tmp_path):
    (tmp_path / "services.toml").write_text(
        '[services.p]\nsource = { pip = "httpbin>=0.10", index = "https://i.example/simple", '
        'extra_index = ["file:///w"], poll = "5m" }\ncommand = ["httpbin"]\n')
    source = config.load(tmp_path / "services.toml").services["p"].source
    assert (source.kind, source.requirement, source.index, source.extra_index, source.poll) == (
        "pip", "httpbin>=0.10", "https://i.example/simple", ("file:///w",), 300.0)
    found = errors(tmp_path, '[services.p]\nsource = { pip = "a b", index = "ftp://x", ref = "main" }\ncommand = ["x"]\n')
    assert len(found) == 3 and all(line.startswith("2: ") for line in found)
    assert any("bad requirement 'a b'" in line for line in found)  # (the rest is packaging's wording)
    assert any("bad index URL 'ftp://x'" in line for line in found)
    assert any('"ref" does not apply to a pip source' in line for line in found)


@pytest.mark.parametrize(("text", "line", "message"), [
    ('[supervise]\nruntime = "kubernetes"\n[services.w]\nsource = { image = "nginx" }\n', 2, "not run by a local supervisor"),
    ('[services.w]\nsource = { image = "nginx" }\nruntime = "local"\n', 3, 'runtime = "local" contradicts it'),
    ('[services.w]\ncommand = ["x"]\nports = ["8080:80"]\n', 3, '"ports" applies to containers'),
    ('[services.w]\ncommand = ["x"]\nvolumes = ["nope"]\n', 3, "bad volume 'nope'"),
    ('[services.w]\nsource = { image = "Bad Image" }\n', 2, "bad image reference"),
    ('[services.w]\nsource = "."\nbuild = { dockerfile = "../Dockerfile" }\ncommand = ["x"]\n', 3, "must be a path inside the source"),
    ('[services.w]\nsource = { image = "nginx", git = "https://x/y.git" }\n', 2, "takes one of"),
    ('[supervise]\ndocker_host = 5\n[services.w]\ncommand = ["x"]\n', 2, '"docker_host" must be'),
])
def test_container_keys_are_checked_and_refused_with_located_errors(tmp_path, text, line, message):
    found = errors(tmp_path, text)
    assert any(entry.startswith(f"{line}: ") and message in entry for entry in found), found


def test_docker_host_setting(tmp_path):
    (tmp_path / "services.toml").write_text('[supervise]\ndocker_host = "unix:///run/podman/podman.sock"\n'
                                            '[services.w]\ncommand = ["x"]\n')
    assert config.load(tmp_path / "services.toml").settings.docker_host == "unix:///run/podman/podman.sock"


@pytest.mark.parametrize(("text", "runtime", "ports", "image_build", "command"), [
    ('[services.w]\nsource = { image = "nginx:1.25" }\nports = ["8080:80"]\n', "container", ("8080:80",), None, ()),
    ('[services.w]\nsource = "."\nbuild = { dockerfile = "Dockerfile" }\n', "container", (),
     ImageBuild("Dockerfile", "."), ()),
    ('[services.w]\nruntime = "container"\ncommand = ["x"]\n', "container", (), None, ("x",)),
    ('[supervise]\nruntime = "container"\n[services.w]\ncommand = ["x"]\n', None, (), None, ("x",)),
])
def test_container_services_are_routed_to_the_container_runtime(tmp_path, text, runtime, ports, image_build, command):
    """An image source or a Dockerfile build implies a container; no command runs the image's CMD."""
    (tmp_path / "services.toml").write_text(text)
    desired = config.load(tmp_path / "services.toml")
    spec = desired.services["w"]
    assert (spec.runtime, spec.ports, spec.image_build, spec.command) == (runtime, ports, image_build, command)
    assert (spec.runtime or desired.settings.runtime) == "container"


def test_volumes_are_kept_with_host_folders_made_absolute(tmp_path):
    (tmp_path / "services.toml").write_text('[services.w]\nsource = { image = "nginx" }\n'
                                            'volumes = ["./data:/data:ro", "cache:/cache"]\n')
    spec = config.load(tmp_path / "services.toml").services["w"]
    assert spec.volumes == (f"{tmp_path / 'data'}:/data:ro", "cache:/cache:rw")


def test_a_cluster_service_in_a_local_file_needs_an_image_and_is_one_replica_to_the_engine(tmp_path):
    mixed = '[services.w]\nruntime = "kubernetes"\ncommand = ["x"]\nreplicas = 3\n'
    with pytest.raises(config.ConfigError, match="services.w: has no image for Kubernetes"):
        config.parse(mixed, tmp_path / "services.toml", runtimes=config.RUNTIMES)
    spec = config.parse(mixed + 'kubernetes = { image = "w:1" }\n', tmp_path / "services.toml").services["w"]
    assert (spec.runtime, spec.replicas, spec.slots) == ("kubernetes", 3, 1) and '"w:1"' in (spec.cluster or "")


def test_plan_shows_image_pulls_and_builds_with_their_reasons(tmp_path):
    from supervisor.desired.model import Observed
    from supervisor.decide.plan import plan

    (tmp_path / "services.toml").write_text(
        '[services.web]\nsource = { image = "nginx:1.25" }\n'
        '[services.app]\nsource = "."\nbuild = { dockerfile = "Dockerfile", context = "docker" }\n')
    lines = plan(config.load(tmp_path / "services.toml"), Observed({})).lines()
    assert lines == ["pull web: new service (image nginx:1.25)", "start web[0]: new service",
                     "build app: new service (image from Dockerfile in docker)", "start app[0]: new service"]
