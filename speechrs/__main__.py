from speechrs.cli.app import app

app()
