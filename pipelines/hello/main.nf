#!/usr/bin/env nextflow
/*
 * hello: nfhub's demo pipeline.
 * Reads one name per line from --input, greets every name (SAY_HELLO) and, unless --uppercase false, shouts the
 * greeting (UPPERCASE). Both steps publish their files under --outdir: hello/<name>.txt and upper/<name>.upper.txt.
 * tests/fake_nextflow.py reproduces the same outputs from fake_nextflow.json.
 */

process SAY_HELLO {
    tag "${name}"
    publishDir "${params.outdir}/hello", mode: params.publish_dir_mode

    input:
    val name

    output:
    tuple val(name), path("${name}.txt")

    script:
    """
    echo '${params.greeting}, ${name}!' > '${name}.txt'
    """
}

process UPPERCASE {
    tag "${name}"
    publishDir "${params.outdir}/upper", mode: params.publish_dir_mode

    input:
    tuple val(name), path(greeting)

    output:
    path "${name}.upper.txt"

    script:
    """
    tr '[:lower:]' '[:upper:]' < '${greeting}' > '${name}.upper.txt'
    """
}

workflow {
    if (!params.input) {
        error "Missing required parameter: --input"
    }
    names = channel.fromPath(params.input, checkIfExists: true)
        .splitText()
        .map { line -> line.trim() }
        .filter { line -> line != '' }
        .take(params.max_names as int)
    greetings = SAY_HELLO(names)
    if (params.uppercase) {
        UPPERCASE(greetings)
    }
}
