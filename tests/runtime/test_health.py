from courtyard import __version__


async def test_health_endpoints_answer_the_seed_json(courtyard):
    rt = await courtyard()
    for path, status in [
        ("/api/health/", "healthy"),
        ("/api/health/ready", "ready"),
        ("/api/health/live", "live"),
    ]:
        answer = await rt.client.get(path)
        assert answer.status_code == 200
        assert answer.json() == {"ok": True, "status": status, "version": __version__}
        assert list(answer.json()) == ["ok", "status", "version"]


async def test_ready_is_503_while_stopping(courtyard):
    rt = await courtyard()
    rt.dispatcher.begin_shutdown()
    answer = await rt.client.get("/api/health/ready")
    assert answer.status_code == 503
    assert answer.json()["ok"] is False
    assert (await rt.client.get("/api/health/live")).status_code == 200


async def test_before_the_first_generation_only_liveness_answers(tmp_path):
    import httpx
    from courtyard.dispatcher import Dispatcher
    from courtyard.settings import Settings

    dispatcher = Dispatcher(Settings(data_dir=tmp_path, entry_points=False))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=dispatcher), base_url="http://localhost"
    ) as client:
        assert (await client.get("/api/health/live")).status_code == 200
        ready = await client.get("/api/health/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "starting"
        other = await client.get("/api/plugins/")
        assert other.status_code == 503
        assert other.json()["error"]["code"] == "NOT_READY"
        assert other.headers["x-request-id"]
        await dispatcher.start()
        assert (await client.get("/api/health/ready")).status_code == 200
        await dispatcher.close()
