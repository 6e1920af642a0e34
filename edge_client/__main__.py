from edge_client.cli import app

app()
