from pailfs.cli import main

main()
