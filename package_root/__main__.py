from runink.core.cli import main

main()
