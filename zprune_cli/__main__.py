from zprune_cli.cli.app import main

main()
