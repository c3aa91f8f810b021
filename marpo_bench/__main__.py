from marpo_bench.cli import main

main()
