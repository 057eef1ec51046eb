//! The stock `taskmaster-handler` binary: the child runtime with the standard
//! modules. The master spawns it; it is not meant to be run by hand.

fn main() {
    taskmaster_handler::run(taskmaster_modules::standard())
}
