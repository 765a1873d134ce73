"""`recap download` against hostile input: every spelling of a private address, redirects into the
private network, DNS names that point inside, and secrets in URLs and error messages.

The adversarial cases run in a loopback-only network namespace (tests/netns.py): nothing can leave
the machine whatever the downloader does, and a server listening on every address of the
namespace notices a connection to any of them. The in-process tests use only IP literals that
name this machine's loopback, against the tests' loopback server."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from recaption.cli import app
from recaption.downloads import DownloadConfig
from recaption.downloads.fetch import Fetcher

from ..image_server import ImageServer
from ..netns import needs_netns, run_isolated
from .address_cases import REFUSED

# Spellings of this machine's own addresses that resolve without DNS (the system resolver's
# inet_aton forms, IDNA-normalised digits and dots, IPv6 forms): `{P}` is the server's port.
LITERAL_SPELLINGS = {
    "unicode-digits": "http://①②⑦.⓪.⓪.①:{P}/s/unicode-digits",
    "fullwidth": "http://１２７．０．０．１:{P}/s/fullwidth",
    "ideographic-dots": "http://127。0。0。1:{P}/s/ideographic-dots",
    "mixed-digits": "http://①②⑦.0.0.1:{P}/s/mixed-digits",
    "decimal": "http://2130706433:{P}/s/decimal",
    "octal": "http://0177.0.0.1:{P}/s/octal",
    "hex": "http://0x7f.0.0.1:{P}/s/hex",
    "hex-integer": "http://0x7f000001:{P}/s/hex-integer",
    "short": "http://127.1:{P}/s/short",
    "trailing-dot": "http://127.0.0.1.:{P}/s/trailing-dot",
    "other-loopback": "http://127.0.0.2:{P}/s/other-loopback",
    "unspecified": "http://0.0.0.0:{P}/s/unspecified",
    "zero": "http://0:{P}/s/zero",
    "ipv6": "http://[::1]:{P}/s/ipv6",
    "ipv6-long": "http://[0:0:0:0:0:0:0:1]:{P}/s/ipv6-long",
    "mapped": "http://[::ffff:127.0.0.1]:{P}/s/mapped",
    "mapped-hex": "http://[::ffff:7f00:1]:{P}/s/mapped-hex",
    "compatible": "http://[::127.0.0.1]:{P}/s/compatible",
    "ipv6-unspecified": "http://[::]:{P}/s/ipv6-unspecified",
    "userinfo": "http://public.example@127.0.0.1:{P}/s/userinfo",
}
# Every non-public address of the shared list, as a URL (IPv6 in brackets).
LITERAL_SPELLINGS.update({
    f"case-{name}": f"http://{f'[{address}]' if ':' in address else address}:{{P}}/s/case-{name}"
    for name, address in REFUSED.items()
})
# Names: only inside the namespace, where /etc/hosts is ours and there is no DNS server.
NAME_SPELLINGS = {
    "localhost-dot": "http://localhost.:{P}/s/localhost-dot",
    "uppercase": "http://LOCALHOST:{P}/s/uppercase",
    "sub-localhost": "http://a.b.localhost:{P}/s/sub-localhost",
    "dns-name": "http://inside.test:{P}/s/dns-name",  # /etc/hosts: 127.0.0.1
    "dns-name-v6": "http://inside6.test:{P}/s/dns-name-v6",  # /etc/hosts: ::1
    "dns-site-local": "http://sitelocal.test:{P}/s/dns-site-local",  # /etc/hosts: fec0::1
    "dns-translated": "http://translated.test:{P}/s/dns-translated",  # /etc/hosts: ::ffff:0:7f00:1
}
HOSTS = {
    "localhost": "127.0.0.1",
    "inside.test": "127.0.0.1",
    "inside6.test": "::1",
    "sitelocal.test": "fec0::1",
    "translated.test": "::ffff:0:7f00:1",
    "public.test": "93.184.216.34",
}
PUBLIC = "93.184.216.34"  # put on the namespace's lo: an address the downloader allows


def _isolated_download(urls: dict[str, str], runs: dict[str, list[str]], timeout: float = 120) -> dict:
    """In a fresh namespace: serve on every address, write the URLs as metadata (`{P}` filled
    in, also inside URL-encoded redirect targets), run `recap download` once per entry of `runs`
    (its extra flags) into a fresh folder, and report the exit code, the output, the server
    paths hit and each row's outcome."""
    code = f"""
        import json, tempfile
        import pyarrow as pa, pyarrow.parquet as pq
        from typer.testing import CliRunner
        from recaption.cli import app
        from tests.netns import any_address_server

        URLS, RUNS = json.loads({json.dumps(json.dumps([urls, runs]))})
        report = {{}}
        with any_address_server() as server:
            port = str(server.port)
            def fill(url):  # {{P}}, also inside (twice) URL-encoded redirect targets
                return url.replace("{{P}}", port).replace("%7BP%7D", port).replace("%257BP%257D", port)
            rows = [{{"url": fill(u), "caption": n}} for n, u in URLS.items()]
            for run, flags in RUNS.items():
                folder = tempfile.mkdtemp()
                pq.write_table(pa.Table.from_pylist(rows), folder + "/urls.parquet")
                before = server.hits.copy()
                result = CliRunner().invoke(app, ["download", folder + "/urls.parquet", "-o", folder + "/out",
                    "--timeout", "3", "--retries", "0", "--image-size", "16", *flags])
                table = pq.read_table(folder + "/out/00000.parquet").to_pylist()
                report[run] = {{
                    "exit": result.exit_code,
                    "output": result.output,
                    "hits": {{p: n - before.get(p, 0) for p, n in server.hits.items()
                             if n > before.get(p, 0)}},
                    "outcomes": {{r["caption"]: [r["outcome"], r["error_message"]] for r in table}},
                }}
        print(json.dumps(report))
    """
    # A global IPv6 address on lo too: the resolver answers AAAA names only where one is configured.
    return run_isolated(code, public=[PUBLIC, "2606:4700::1111"], hosts=HOSTS, timeout=timeout)


@needs_netns
def test_no_spelling_of_a_private_address_is_reached_without_the_flag():
    spellings = {**LITERAL_SPELLINGS, **NAME_SPELLINGS}
    report = _isolated_download(spellings, {"refused": [], "allowed": ["--allow-private-network"]})
    refused, allowed = report["refused"], report["allowed"]
    assert refused["exit"] == 0, refused["output"]
    assert refused["hits"] == {}, f"reached without --allow-private-network: {refused['hits']}"
    wrong = {n: o for n, o in refused["outcomes"].items() if o[0] != "blocked_address"}
    assert not wrong, wrong
    assert f"{len(spellings)} row(s) refused" in refused["output"]
    assert "--allow-private-network" in refused["output"]
    # The control: the same URLs with the flag do reach the server, so a leak would be seen.
    reached = {path.rsplit("/", 1)[-1] for path in allowed["hits"]}
    assert {
        "unicode-digits",
        "fullwidth",
        "ideographic-dots",
        "ipv6",
        "mapped",
        "other-loopback",
        "uppercase",
        "dns-name",
        "dns-name-v6",
        "userinfo",
    } <= reached, allowed["outcomes"]


@needs_netns
def test_redirects_into_the_private_network_are_refused():
    hop = f"http://{PUBLIC}:{{P}}/redirect?to="
    targets = {**LITERAL_SPELLINGS, **NAME_SPELLINGS}
    urls = {name: hop + quote(url, safe="") for name, url in targets.items()}
    urls["two-hops"] = hop + quote(hop + quote(targets["unicode-digits"], safe=""), safe="")
    urls["public-image"] = hop + quote("http://public.test:{P}/img/0.jpg", safe="")  # the control
    both = _isolated_download(urls, {"refused": [], "allowed": ["--allow-private-network"]})
    report, allowed = both["refused"], both["allowed"]
    # The control: with the flag the same redirects do arrive, so a leak would be seen.
    reached = {path.rsplit("/", 1)[-1] for path in allowed["hits"] if path.startswith("/s/")}
    assert {"unicode-digits", "fullwidth", "ipv6", "mapped", "dns-name", "uppercase"} <= reached, reached
    private_hits = {p: n for p, n in report["hits"].items() if p.startswith("/s/")}
    assert private_hits == {}, f"a redirect reached a private address: {private_hits}"
    assert report["hits"]["/redirect"] == len(urls) + 1, "every first hop (public) was followed"
    assert report["hits"]["/img/0.jpg"] == 1 and report["outcomes"]["public-image"][0] == "ok"
    wrong = {n: o for n, o in report["outcomes"].items() if n != "public-image" and o[0] != "blocked_address"}
    assert not wrong, wrong


def test_the_connector_itself_refuses_every_spelling(tmp_path):
    """Not only the downloader's own check: a request made straight through the session (as a
    redirect aiohttp followed itself would be) cannot connect to a private address either."""
    from recaption.downloads.fetch import BlockedAddress

    with ImageServer() as server:
        urls = [u.replace("{P}", str(server.port)) for u in LITERAL_SPELLINGS.values()]

        async def attempt() -> list:
            errors = []
            async with Fetcher(DownloadConfig(output=str(tmp_path))) as fetcher:
                for url in urls:
                    try:
                        async with fetcher.session.get(url) as response:
                            errors.append((url, f"HTTP {response.status}"))
                    except (aiohttp.ClientError, OSError) as exc:
                        errors.append((url, exc))
            return errors

        results = asyncio.run(attempt())
        assert sum(server.hits.values()) == 0, dict(server.hits)
    for url, error in results:
        assert isinstance(error, Exception), (url, error)
        cause = getattr(error, "os_error", None)
        refused = isinstance(error, BlockedAddress) or isinstance(cause, BlockedAddress)
        assert refused or isinstance(error, aiohttp.InvalidURL), (url, error)


def test_the_socket_guard_refuses_even_past_the_resolver(tmp_path, monkeypatch):
    """The last gate: with the connector's host check taken out, the socket factory still
    refuses to connect to a loopback address."""
    import inspect

    from recaption.downloads.fetch import SafeConnector

    if "socket_factory" not in inspect.signature(aiohttp.TCPConnector).parameters:
        pytest.skip("aiohttp < 3.12 has no socket_factory")
    monkeypatch.setattr(SafeConnector, "_resolve_host", aiohttp.TCPConnector._resolve_host)
    with ImageServer() as server:

        async def attempt():
            async with Fetcher(DownloadConfig(output=str(tmp_path))) as fetcher:
                return await fetcher.fetch_once(f"http://127.0.0.1:{server.port}/img/0.jpg")

        monkeypatch.setattr("recaption.downloads.fetch.host_refused", lambda host: None)
        result = asyncio.run(attempt())
        assert sum(server.hits.values()) == 0
    assert result.outcome == "blocked_address" and "127.0.0.1" in result.error, result


def test_secrets_in_a_metadata_url_are_not_printed(tmp_path):
    with ImageServer() as server:
        url = f"http://reader:hunter2-pw@127.0.0.1:{server.port}/missing/urls.parquet"
        result = CliRunner().invoke(app, ["download", url, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and "hunter2-pw" not in result.output, result.output
    assert "http://***@127.0.0.1" in result.output


def test_redact_masks_every_kind_of_secret():
    from recaption.redact import redact

    key = "sk-test-0123456789abcdef"
    text = (
        f"http://user:pa55word@host/v1: HTTP 400 invalid key {key} (Authorization: Bearer {key}); "
        'retry https://x.example/img.jpg?sig=AbC%2Fd&se=1&api_key=k-123456 or {"api_key": "k-654321"} '
        "ghp_abcdefghijklmnopqrstuvwxyz0123 max_tokens=32 token limit; rating: 4"
    )
    masked = redact(text, secrets=[key, "pa55word"])
    for secret in (key, "pa55word", "AbC%2Fd", "k-123456", "k-654321", "ghp_abcdefghijklmnopqrstuvwxyz0123"):
        assert secret not in masked, (secret, masked)
    assert "http://***@host/v1: HTTP 400" in masked
    assert masked.endswith("max_tokens=32 token limit; rating: 4"), "ordinary text is left alone"
    assert redact(None) is None and redact("no secrets here") == "no secrets here"
    # a file named like a secret is a path in a message, not a credential
    assert redact("--images /etc/passwd: not a .tar file") == "--images /etc/passwd: not a .tar file"
    assert redact("password: hunter22") == "password: ***"
    assert "abcdef123456" not in redact("https://cdn.example.com/auth_token=abcdef123456/a.jpg")  # in a path
    assert "hunter2secret" not in redact("GET /api/password=hunter2secret")


@needs_netns
@pytest.mark.slow
def test_the_ray_executor_refuses_the_same_addresses_and_redirects():
    """The same list on `--executor ray`: its workers fetch through the same policy."""
    pytest.importorskip("ray")
    hop = f"http://{PUBLIC}:{{P}}/redirect?to="
    urls = {**LITERAL_SPELLINGS, **NAME_SPELLINGS}
    urls.update({f"redirect-{name}": hop + quote(url, safe="") for name, url in NAME_SPELLINGS.items()})
    urls["public-image"] = hop + quote("http://public.test:{P}/img/0.jpg", safe="")  # the control
    report = _isolated_download(urls, {"ray": ["--executor", "ray"]}, timeout=300)["ray"]
    assert report["exit"] == 0, report["output"]
    private_hits = {p: n for p, n in report["hits"].items() if p.startswith("/s/")}
    assert private_hits == {}, f"a Ray worker reached a private address: {private_hits}"
    assert report["outcomes"]["public-image"][0] == "ok", report["outcomes"]["public-image"]
    wrong = {n: o for n, o in report["outcomes"].items() if n != "public-image" and o[0] != "blocked_address"}
    assert not wrong, wrong


_SECRET = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_~",
                  min_size=8, max_size=24)
_PARAM = st.sampled_from(["token", "access_token", "sig", "Signature", "X-Amz-Signature", "X-Amz-Credential",
                          "X-Goog-Signature", "key", "api_key", "apiKey", "client_secret", "password",
                          "Policy"])


@given(user=_SECRET, password=_SECRET, name=_PARAM, value=_SECRET, other=st.sampled_from(["w", "size", "id"]),
       in_fragment=st.booleans())
def test_a_stored_url_keeps_no_credential(user, password, name, value, other, in_fragment):
    from recaption.redact import strip_url_secrets

    params = f"{other}=42&{name}={value}"
    url = f"https://{user}:{password}@img.example/p/a.jpg" + (f"#{params}" if in_fragment else f"?{params}")
    stored = strip_url_secrets(url)
    for secret in (user, password, value):
        assert secret not in stored, (url, stored)
    assert stored.startswith("https://img.example/p/a.jpg") and f"{other}=42" in stored
    assert strip_url_secrets(stored) == stored, "masking twice changes nothing"


@given(path=st.text(alphabet="abcdefghij/._-", max_size=20), w=st.integers(0, 10**6))
def test_a_url_without_credentials_is_stored_unchanged(path, w):
    from recaption.redact import strip_url_secrets

    url = f"https://img.example/{path}?w={w}&fmt=jpg"
    assert strip_url_secrets(url) == url
