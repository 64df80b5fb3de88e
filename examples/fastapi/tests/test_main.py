from fastapi.testclient import TestClient

from main import app, VERSION

client = TestClient(app)


def test_health_says_healthy_and_the_version():
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "healthy", "version": VERSION}
