import subprocess
import sys


def test_the_client_loads_no_torch() -> None:
    code = "import sys, client.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
