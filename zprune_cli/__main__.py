from zprune_cli.cli import main

main()
