"""Command-line flags of the TIPO extension (the WebUI calls ``preload(parser)`` before parsing its
arguments)."""


def preload(parser):
    parser.add_argument(
        "--tipo-models-dir",
        type=str,
        default=None,
        help="TIPO: folder with the TIPO/DanTagGen models (default: <extension>/models or the settings page)",
    )
    parser.add_argument(
        "--tipo-device",
        type=str,
        default=None,
        help="TIPO: device used when a control says 'auto': auto, cpu, cuda or cuda:N",
    )
    parser.add_argument(
        "--tipo-offline",
        action="store_true",
        default=False,
        help="TIPO: never download models; only use files already in the models folder",
    )
