"""`python scripts/device_check.py --help`: the command is `train.cli.device_check` (also installed as `anchor-device-check`)."""

from train.cli.device_check import main

if __name__ == "__main__":
    main()
