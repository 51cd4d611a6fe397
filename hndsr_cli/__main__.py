from hndsr_cli import app

app(prog_name="hndsr")
