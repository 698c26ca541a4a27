"""containerd's hosts.toml: which endpoints a pull tries, in which order, with which trust."""

from __future__ import annotations

from pathlib import Path

from pullhealth.agent import hoststoml


def write(root: Path, host: str, text: str) -> Path:
    directory = root / host
    directory.mkdir(parents=True)
    (directory / "hosts.toml").write_text(text)
    return directory


def test_no_config_is_the_server_only(tmp_path: Path) -> None:
    config = hoststoml.load(tmp_path, "myacr.azurecr.io")
    assert [e.url for e in config.pull_endpoints()] == ["https://myacr.azurecr.io"]
    assert hoststoml.load(None, "docker.io").endpoints[0].url == "https://registry-1.docker.io"
    assert config.source == ""


def test_mirrors_in_file_order_then_server(tmp_path: Path) -> None:
    directory = write(
        tmp_path,
        "registry.test:5000",
        """
server = "https://registry.test:5000"

[host."https://mirror-b.test"]
  capabilities = ["pull", "resolve"]
  ca = "mirror-ca.crt"

[host."https://push-only.test"]
  capabilities = ["push"]

[host."http://plain.test:8080"]
  capabilities = ["pull"]
  skip_verify = true
""",
    )
    config = hoststoml.load(tmp_path, "registry.test:5000")
    pulls = config.pull_endpoints()
    assert [e.url for e in pulls] == ["https://mirror-b.test", "http://plain.test:8080", "https://registry.test:5000"]
    assert pulls[0].mirror and pulls[0].ca == (str(directory / "mirror-ca.crt"),)
    assert pulls[1].plain_http and pulls[1].skip_verify and pulls[1].host == "plain.test:8080"
    assert not pulls[2].mirror
    assert "mirror https://mirror-b.test (pull, resolve) -> mirror http://plain.test:8080" in hoststoml.describe(pulls)


def test_default_directory_and_server_settings(tmp_path: Path) -> None:
    write(tmp_path, "_default", 'server = "https://fallback.test"\nca = ["/etc/a.crt", "/etc/b.crt"]\nskip_verify = false\n')
    config = hoststoml.load(tmp_path, "other.test")
    assert config.endpoints[-1].url == "https://fallback.test"
    assert config.endpoints[-1].ca == ("/etc/a.crt", "/etc/b.crt")


def test_broken_and_oversized_files_are_reported(tmp_path: Path) -> None:
    write(tmp_path, "bad.test", "server = [unclosed")
    config = hoststoml.load(tmp_path, "bad.test")
    assert "not valid TOML" in config.problem and config.endpoints[0].url == "https://bad.test"
    write(tmp_path, "big.test", "#" * (hoststoml.MAX_FILE + 10))
    assert "larger than" in hoststoml.load(tmp_path, "big.test").problem


def test_hosts_are_bounded(tmp_path: Path) -> None:
    tables = "".join(f'[host."https://m{i}.test"]\n' for i in range(50))
    write(tmp_path, "many.test", tables)
    assert len(hoststoml.load(tmp_path, "many.test").endpoints) == hoststoml.MAX_HOSTS + 1
