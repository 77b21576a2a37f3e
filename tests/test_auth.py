"""The access policy of the core: tokens with scopes, names bound to client certificates, and
its use by a Session (``ERR unauthorized``)."""

import hashlib

import pytest

from logatron_core import (
    Access,
    Authorizer,
    ErrorCode,
    ErrorReply,
    Registry,
    Session,
    TokenGrant,
    certificate_names,
)

WRITER = TokenGrant.from_secret("w-secret", write=("worker-*", "ci-*"))
READER = TokenGrant.from_secret("r-secret", read=True)
HASHED = TokenGrant.from_sha256(hashlib.sha256(b"h-secret").hexdigest(), read=True, write=("h",))
POLICY = Authorizer([WRITER, READER, HASHED])


def refusal(
    policy: Authorizer, name: str, secret: str = "", names: frozenset[str] | None = None
) -> str | None:
    return policy.identify_refusal(name, secret, names)


def test_an_open_server_lets_anyone_in_and_ignores_tokens() -> None:
    open_server = Authorizer()
    assert not open_server.tokens_required
    assert refusal(open_server, "anyone") is None
    assert refusal(open_server, "anyone", "some-token") is None
    assert open_server.read_access(None) is Access.ALLOWED


def test_a_write_token_covers_the_names_its_patterns_match() -> None:
    assert refusal(POLICY, "worker-7", "w-secret") is None
    assert refusal(POLICY, "ci-main", "w-secret") is None
    assert refusal(POLICY, "Worker-7", "w-secret") == "the token may not identify as 'Worker-7'"
    assert refusal(POLICY, "db", "w-secret") == "the token may not identify as 'db'"


def test_a_missing_or_unknown_token_is_refused() -> None:
    assert refusal(POLICY, "worker-1") == "this server needs a token: IAM <name> <token>"
    assert refusal(POLICY, "worker-1", "w-secreT") == "the token is not valid"


def test_a_read_only_token_cannot_write_and_a_write_token_cannot_read() -> None:
    assert refusal(POLICY, "worker-1", "r-secret") is not None
    assert POLICY.read_access("r-secret") is Access.ALLOWED
    assert POLICY.read_access("w-secret") is Access.FORBIDDEN
    assert POLICY.read_access(None) is Access.UNAUTHORIZED
    assert POLICY.read_access("nope") is Access.UNAUTHORIZED


def test_a_hashed_secret_works_like_a_plain_one() -> None:
    assert refusal(POLICY, "h", "h-secret") is None
    assert POLICY.read_access("h-secret") is Access.ALLOWED
    assert POLICY.grant("h-secret") is HASHED


def test_the_single_token_reads_and_writes_any_name() -> None:
    single = Authorizer.single_token("s3cret")
    assert single.tokens_required
    assert refusal(single, "any.name@host", "s3cret") is None
    assert single.read_access("s3cret") is Access.ALLOWED
    assert (single + POLICY).read_access("r-secret") is Access.ALLOWED


def test_a_certificate_binds_the_names_it_carries() -> None:
    for policy in (Authorizer(), POLICY):
        assert refusal(policy, "a", names=frozenset({"a", "a.example"})) is None
        assert refusal(policy, "a.example", names=frozenset({"a", "a.example"})) is None
        assert refusal(policy, "b", names=frozenset({"a"})) is not None
        assert refusal(policy, "b", names=frozenset()) is not None
    assert refusal(Authorizer(), "b", names=frozenset({"a"})) == (
        "the client certificate does not carry the name 'b'"
    )


def test_a_token_grants_names_beyond_the_certificate_but_must_be_valid() -> None:
    names = frozenset({"a"})
    assert refusal(POLICY, "worker-1", "w-secret", names) is None
    assert refusal(POLICY, "b", "w-secret", names) is not None
    assert refusal(POLICY, "a", "wrong", names) == "the token is not valid"


def test_secrets_are_never_shown() -> None:
    assert "w-secret" not in repr(WRITER) and "w-secret" not in repr(POLICY)
    messages = [refusal(POLICY, "db", secret) for secret in ("w-secret", "r-secret", "bad")]
    assert all(m is not None and "secret" not in m and "bad" not in m for m in messages)
    with pytest.raises(ValueError) as raised:
        TokenGrant.from_secret(" leading-space")
    assert "leading-space" not in str(raised.value)


@pytest.mark.parametrize("digest", ["", "ab" * 31, "zz" * 32, "ab" * 33])
def test_a_malformed_digest_is_refused(digest: str) -> None:
    with pytest.raises(ValueError):
        TokenGrant.from_sha256(digest)


def test_certificate_names_are_the_common_name_and_dns_alternative_names() -> None:
    peer = {
        "subject": ((("countryName", "FR"),), (("commonName", "worker-1"),)),
        "subjectAltName": (("DNS", "worker-1.example"), ("IP Address", "10.0.0.1")),
    }
    assert certificate_names(peer) == {"worker-1", "worker-1.example"}
    assert certificate_names(None) == frozenset()
    assert certificate_names({}) == frozenset()


def test_a_session_refuses_an_unauthorized_name_and_closes() -> None:
    registry = Registry()
    session = Session(registry, authorizer=POLICY)
    events = session.receive_data(b"IAM db w-secret\nLOG never\n", 1.0)
    assert session.closed and registry.names() == []
    assert [type(event) for event in events] == [ErrorReply]
    assert session.data_to_send().startswith(b"ERR unauthorized ")
    assert registry.stats.errors == {"unauthorized": 1}


def test_a_session_with_a_certificate_accepts_its_names_only() -> None:
    registry = Registry()
    good = Session(registry, certificate_names=frozenset({"a"}))
    good.receive_data(b"IAM a\nLOG mine\n", 1.0)
    assert not good.closed and [entry.message for entry in registry.log("a")] == ["mine"]
    bad = Session(registry, certificate_names=frozenset({"a"}))
    bad.receive_data(b"IAM b\n", 1.0)
    assert bad.closed and bad.data_to_send().startswith(b"ERR unauthorized ")
    assert ErrorCode.UNAUTHORIZED.fatal
