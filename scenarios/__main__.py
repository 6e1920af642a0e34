from scenarios.cli import app

app()
