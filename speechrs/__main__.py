from speechrs.cli.main import app

app()
