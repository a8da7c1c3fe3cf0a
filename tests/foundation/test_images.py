"""The lab's image cache (lab/images.py): what goes into the images, when they
are rebuilt, and how they are swapped. The builds themselves (mmdebstrap) run
in every lab test; here the builders are replaced by ones that only make the
directory, so the cache logic is checked in milliseconds."""
import ast
import re
from pathlib import Path

import pytest

from lab import images

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def debian_packages_of_the_role():
    """Every package name in map.jinja's Debian family (keys ending in package/packages)."""
    text = (REPO / "salt/states/vpn_gateway/map.jinja").read_text()
    literal = re.search(r"set os_family_map = (\{.*?\}) %\}", text, re.S).group(1)
    found = set()

    def walk(mapping):
        for key, value in mapping.items():
            if isinstance(value, dict):
                walk(value)
            elif key.endswith("package") and isinstance(value, str):
                found.add(value)
            elif key.endswith("packages"):
                found.update(value)

    walk(ast.literal_eval(literal)["Debian"])
    return found


def test_the_offline_repo_holds_every_package_the_role_can_install():
    assert debian_packages_of_the_role() <= set(images.ROLE_PACKAGES)
    assert "libreswan" in debian_packages_of_the_role()


def test_a_fresh_image_has_nothing_of_the_role():
    assert not set(images.FRESH_PACKAGES) & set(images.ROLE_PACKAGES)


def test_mirrors_come_from_the_machines_apt_sources_in_both_formats(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n")
    assert images.mirrors(tmp_path) == ("http://mirror.invalid/debian",
                                        "http://mirror.invalid/debian-security")
    (tmp_path / "sources.list.d/debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://other.invalid/debian trixie main\n")
    assert images.mirrors(tmp_path) == ("http://other.invalid/debian", None)
    (tmp_path / "sources.list").write_text("deb http://elsewhere.invalid/ubuntu noble main\n")
    with pytest.raises(images.ImageError, match="no Debian mirror"):
        images.mirrors(tmp_path)


@pytest.fixture
def fake_builds(monkeypatch):
    """Builders that only make the directories; counts the builds."""
    built = []

    def fresh(platform, sources, final, repo, log):
        built.append(final.name)
        final.mkdir()
        repo.mkdir()

    def provisioned(platform, sources, final, log):
        built.append(final.name)
        final.mkdir()

    monkeypatch.setattr(images, "_build_fresh", fresh)
    monkeypatch.setattr(images, "_build_provisioned", provisioned)
    monkeypatch.setattr(images, "sources", lambda platform: [f"deb http://m.invalid/debian "
                                                             f"{platform.suite} main"])
    return built


def test_images_are_built_once_then_rebuilt_and_swapped_when_the_recipe_changes(
        tmp_path, fake_builds, monkeypatch):
    first = images.ensure("debian13", cache=tmp_path, log=lambda *a: None)
    assert len(fake_builds) == 2
    kept = tmp_path / "debian13-converged-0123456789ab"  # lab/converged.py prunes its own
    kept.mkdir()
    assert images.ensure("debian13", cache=tmp_path, log=lambda *a: None) == first
    assert len(fake_builds) == 2  # cached
    for kind, path in first.items():
        assert images.current("debian13", kind, cache=tmp_path) == path

    monkeypatch.setattr(images, "FRESH_PACKAGES", images.FRESH_PACKAGES + ("less",))
    second = images.ensure("debian13", cache=tmp_path, log=lambda *a: None)
    assert second["fresh"] != first["fresh"] and second["repo"] != first["repo"]
    assert len(fake_builds) == 4  # the provisioned image holds FRESH_PACKAGES too
    for kind, path in second.items():
        assert images.current("debian13", kind, cache=tmp_path) == path
        assert not first[kind].exists()  # pruned: no lab mounts it
    assert kept.is_dir()
    assert not list(tmp_path.glob(".*.link"))


def test_an_unknown_platform_is_refused(tmp_path):
    with pytest.raises(images.ImageError, match="debian12"):
        images.ensure("debian11", cache=tmp_path)


def test_a_converged_gateway_is_keyed_by_the_fresh_image_and_the_roles_sources(
        tmp_path, fake_builds):
    from lab import converged

    repo = tmp_path / "repo"
    for path in ("salt/states/vpn_gateway/init.sls", "pillar/top.sls"):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text("first\n")
    (repo / "salt/_modules/__pycache__").mkdir(parents=True)
    cache = tmp_path / "cache"
    images.ensure("debian13", cache=cache, log=lambda *a: None)
    first = converged.key("debian13", repo, cache)
    (repo / "salt/_modules/__pycache__/x.pyc").write_bytes(b"compiled")
    assert converged.key("debian13", repo, cache) == first  # not a source
    assert converged.key("debian12", repo, cache) != first
    (repo / "pillar/top.sls").write_text("second\n")
    assert converged.key("debian13", repo, cache) != first
