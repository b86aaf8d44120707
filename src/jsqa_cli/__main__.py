from jsqa_cli.cli import main

main()
