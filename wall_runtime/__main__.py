from wall_runtime.cli import main

main()
