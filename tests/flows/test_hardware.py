"""flows.hardware: a flow run from the command line waits long enough for Prefect's embedded server."""

from prefect.settings import get_current_settings

from flows import hardware


def test_a_command_line_flow_waits_longer_for_the_embedded_server(monkeypatch):
    # a second search worker on a busy 2-core machine timed out after Prefect's 20 s
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    before = get_current_settings().server.ephemeral.startup_timeout_seconds
    with hardware.patient_embedded_server():
        assert get_current_settings().server.ephemeral.startup_timeout_seconds == 120
    assert get_current_settings().server.ephemeral.startup_timeout_seconds == before
